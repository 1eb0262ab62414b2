// Package listen parses listen addresses in the MTA's own syntax and opens
// them: "inet:HOST:PORT", "inet:PORT@HOST", "inet6:[ADDR]:PORT",
// "inet6:PORT@ADDR", "unix:/path" and "local:/path".
package listen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Addr is a parsed listen address.
type Addr struct {
	Network string // "tcp4", "tcp6" or "unix"
	Address string // host:port, or a socket path
	Spec    string // as written
}

func (a Addr) String() string { return a.Spec }

// Parse reads an address such as "inet:127.0.0.1:8897".
func Parse(s string) (Addr, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Addr{}, fmt.Errorf("%q: want inet:HOST:PORT, inet6:[ADDR]:PORT or unix:/PATH", s)
	}
	switch strings.ToLower(kind) {
	case "unix", "local":
		if !filepath.IsAbs(rest) {
			return Addr{}, fmt.Errorf("%q: a unix socket needs an absolute path", s)
		}
		return Addr{Network: "unix", Address: filepath.Clean(rest), Spec: s}, nil
	case "inet", "inet6":
		host, port, err := hostPort(rest)
		if err != nil {
			return Addr{}, fmt.Errorf("%q: %v", s, err)
		}
		network := "tcp4"
		if strings.ToLower(kind) == "inet6" {
			network = "tcp6"
		}
		if ip := net.ParseIP(host); ip == nil && host != "" && host != "localhost" {
			return Addr{}, fmt.Errorf("%q: %q is not an IP address", s, host)
		} else if ip != nil && (ip.To4() != nil) != (network == "tcp4") {
			return Addr{}, fmt.Errorf("%q: %s is not an address of this family", s, host)
		}
		return Addr{Network: network, Address: net.JoinHostPort(host, port), Spec: s}, nil
	}
	return Addr{}, fmt.Errorf("%q: unknown socket type %q (want inet, inet6 or unix)", s, kind)
}

// hostPort accepts "HOST:PORT", "[ADDR]:PORT" and Sendmail's "PORT@HOST".
func hostPort(s string) (host, port string, err error) {
	if p, h, ok := strings.Cut(s, "@"); ok {
		host, port = h, p
	} else if host, port, err = net.SplitHostPort(s); err != nil {
		return "", "", errors.New("want HOST:PORT or PORT@HOST")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return strings.Trim(host, "[]"), port, nil
}

// Socket says how a unix socket is made: its mode, and its owner and group
// (-1 keeps the daemon's). The folder it goes in is created when missing,
// mode 0750 with that group, so the MTA's user can reach the socket and
// nobody else can.
type Socket struct {
	Mode         os.FileMode
	Owner, Group int
}

// Listen opens the address. A unix socket is made as s says; a stale
// socket file left by a crashed daemon is removed, but nothing that is not
// a socket, and no socket some process still answers on.
func Listen(a Addr, s Socket) (net.Listener, error) {
	mode := s.Mode
	if a.Network != "unix" {
		// The MTA is a long-lived local peer and the milter's idle timeout
		// finds dead connections; TCP keepalive would only cost four
		// system calls per accepted connection.
		lc := net.ListenConfig{KeepAlive: -1}
		return lc.Listen(context.Background(), a.Network, a.Address)
	}
	if err := makeParent(filepath.Dir(a.Address), s.Group); err != nil {
		return nil, err
	}
	if err := removeStale(a.Address); err != nil {
		return nil, err
	}
	// bind creates the socket file with the mode the umask leaves; set
	// the umask so it is born with the configured mode, with no window in
	// which the umask's (wider) permissions let another user connect.
	// The umask is the process's: this runs at start, before anything
	// else creates files.
	old := syscall.Umask(int(0o777 &^ mode.Perm()))
	ln, err := net.Listen("unix", a.Address)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	if afterBind != nil {
		afterBind(a.Address)
	}
	if err := os.Chmod(a.Address, mode); err != nil {
		ln.Close()
		return nil, err
	}
	if s.Owner >= 0 || s.Group >= 0 {
		if err := os.Lchown(a.Address, s.Owner, s.Group); err != nil {
			ln.Close()
			return nil, err
		}
	}
	return ln, nil
}

// makeParent creates the socket's folder when missing: mode 0750, in the
// socket's group (so a chrooted Postfix under /var/spool/postfix reaches
// it).
func makeParent(dir string, group int) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o750); err != nil && !os.IsExist(err) {
		return err
	}
	if group >= 0 {
		return os.Lchown(dir, -1, group)
	}
	return nil
}

// afterBind lets a test look at the socket between bind and chmod.
var afterBind func(path string)

func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; not removing it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s: another process is listening on it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%s: cannot tell whether the socket is in use: %v", path, err)
	}
	return os.Remove(path)
}
