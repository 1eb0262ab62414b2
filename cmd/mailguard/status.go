package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"time"

	"mailguard/internal/config"
	"mailguard/internal/filters"
	"mailguard/internal/pidfile"
	"mailguard/internal/safefile"
	"mailguard/internal/webstatus"
)

func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("status", "[--config FILE] [--url URL] [--json]", "Show what the running daemon is doing: messages, refusals by reason over the\nlast hour and day, top signatures, capture's switch, the configuration's\nload, clamd/Redis/DNS health and the latest decisions. It reads the\ndaemon's HTTP listener (http.listen in FILE, with its basic auth).\nExit status 0 when all is well, 1 when a service is down or the latest\nreload failed, 2 when the daemon cannot be asked.", stderr)
	cfgFile := fs.String("config", "", "configuration `FILE` the daemon runs (default: built-in defaults)")
	url := fs.String("url", "", "the listener's `URL` (default: from the configuration)")
	asJSON := fs.Bool("json", false, "print the facts as JSON")
	recent := fs.Int("recent", 10, "latest decisions to list")
	if rc := parse(fs, args); rc >= 0 {
		return rc
	}
	cfg := filters.Default()
	if *cfgFile != "" {
		c, err := filters.Load(*cfgFile)
		if c == nil || c.Bad["http"] {
			fmt.Fprintf(stderr, "%v\nmailguard status: cannot read the configuration\n", err)
			return 2
		}
		cfg = c
	}
	var auth webstatus.Auth
	if cfg.HTTP.User != "" {
		data, err := safefile.ReadFile(cfg.HTTP.PasswordFile, 4096)
		if err != nil {
			fmt.Fprintf(stderr, "mailguard status: http.password_file: %v\n", err)
			return 2
		}
		pw, _, _ := strings.Cut(string(data), "\n")
		auth = webstatus.Auth{User: cfg.HTTP.User, Password: strings.TrimRight(pw, "\r")}
	}
	base := *url
	if base == "" {
		if cfg.HTTP.Listen == "" {
			fmt.Fprintf(stderr, "mailguard status: %s turns the HTTP listener off (http.listen = \"\"): nothing to ask\n", describeConfig(*cfgFile))
			return 2
		}
		base = "http://" + dialable(cfg.HTTP.Listen)
	}
	snap, err := webstatus.Fetch(&http.Client{Timeout: 10 * time.Second}, base, auth)
	if err != nil {
		fmt.Fprintf(stderr, "mailguard status: %v\n%s", err, whyUnreachable(cfg))
		return 2
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(snap)
	} else {
		snap.WriteText(stdout, *recent)
	}
	if !snap.Healthy() {
		return 1
	}
	return 0
}

// dialable turns a listen address into one to connect to: a wildcard
// host is this host's loopback.
func dialable(listen string) string {
	for _, any := range []string{"0.0.0.0:", "[::]:", ":"} {
		if port, ok := strings.CutPrefix(listen, any); ok {
			if any == "[::]:" {
				return "[::1]:" + port
			}
			return "127.0.0.1:" + port
		}
	}
	return listen
}

// whyUnreachable says, from the pid file, whether the daemon runs at all.
func whyUnreachable(cfg *config.Config) string {
	if cfg.PidFile == "" {
		return ""
	}
	pid, err := pidfile.Read(cfg.PidFile)
	if err != nil {
		return fmt.Sprintf("mailguard status: the daemon does not seem to run: %v\n", err)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		return fmt.Sprintf("mailguard status: process %d (from %s) is not running\n", pid, cfg.PidFile)
	}
	return fmt.Sprintf("mailguard status: process %d runs but its HTTP listener does not answer (started with another http.listen? that needs a restart)\n", pid)
}

func describeConfig(file string) string {
	if file == "" {
		return "the built-in configuration"
	}
	return file
}
