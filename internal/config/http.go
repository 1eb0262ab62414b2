package config

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
)

// DefaultHTTPListen is where the metrics and the status page are served
// without an [http] section: loopback only, beside the milter's port.
const DefaultHTTPListen = "127.0.0.1:8899"

// HTTP is the [http] section: the listener for /metrics, the status page
// and `mailguard status`.
type HTTP struct {
	// Listen is "host:port"; "" turns the listener off.
	Listen string
	// User and PasswordFile turn on basic auth (both or neither); a
	// listener beyond loopback needs them.
	User, PasswordFile string
}

type rawHTTP struct {
	Listen       *string `toml:"listen"`
	User         *string `toml:"user"`
	PasswordFile *string `toml:"password_file"`
}

// checkHTTP reads the [http] section into c.HTTP.
func checkHTTP(v *Checker, c *Config, r rawHTTP, file string) {
	field(v, &c.HTTP.Listen, r.Listen, "http.listen", func(s string) (string, error) {
		if s == "" {
			return "", nil
		}
		if _, err := parseHTTPListen(s); err != nil {
			return "", err
		}
		return s, nil
	})
	field(v, &c.HTTP.User, r.User, "http.user", func(s string) (string, error) {
		if s == "" || strings.ContainsAny(s, ":\r\n") {
			return "", fmt.Errorf("%q: want a user name without \":\"", s)
		}
		return s, nil
	})
	field(v, &c.HTTP.PasswordFile, r.PasswordFile, "http.password_file", func(s string) (string, error) {
		if strings.TrimSpace(s) == "" {
			return "", errEmpty
		}
		if !filepath.IsAbs(s) {
			s = filepath.Join(filepath.Dir(file), s)
		}
		return s, nil
	})
	switch {
	case (c.HTTP.User == "") != (c.HTTP.PasswordFile == ""):
		v.fail("http.user", "http.user and http.password_file go together (basic auth needs both)")
	case c.HTTP.Listen != "" && c.HTTP.User == "" && !LoopbackHTTP(c.HTTP.Listen):
		v.fail("http.listen", "%s is reachable beyond this host: set http.user and http.password_file (basic auth), or listen on 127.0.0.1", c.HTTP.Listen)
	}
}

// parseHTTPListen checks a "host:port" listen address.
func parseHTTPListen(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: want host:port, such as \"127.0.0.1:8899\" (\"\" turns the listener off)", s)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	if host == "" {
		host = "0.0.0.0"
	}
	ap, err := netip.ParseAddrPort(net.JoinHostPort(host, port))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: want an IP address and a port, such as \"127.0.0.1:8899\"", s)
	}
	return ap, nil
}

// LoopbackHTTP reports whether an http.listen address is reachable from
// this host only.
func LoopbackHTTP(s string) bool {
	ap, err := parseHTTPListen(s)
	return err == nil && ap.Addr().IsLoopback()
}
