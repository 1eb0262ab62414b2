package clamav

import (
	"cmp"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"mailguard/internal/clamd"
	"mailguard/internal/config"
	"mailguard/internal/filters"
	"mailguard/internal/linefile"
	"mailguard/internal/pipeline"
	"mailguard/internal/shared"
	"mailguard/internal/userdir"
)

func init() { filters.Register(Name, defaults, build, example) }

// Config is the [clamav] section.
type Config struct {
	config.Common
	// Address lists clamd's sockets, separated by commas or blanks.
	Address        string          `toml:"address"`
	MaxConnections int             `toml:"max_connections"`
	ConnectTimeout config.Duration `toml:"connect_timeout"`
	MaxSize        config.Size     `toml:"max_size"`
	OnOversize     string          `toml:"on_oversize"`
	Reply          string          `toml:"reply"`
	AddHeaders     string          `toml:"add_headers"`
	// ClampConfig is clamd's own configuration, read (when it can be)
	// to warn of limits that disagree with ours.
	ClamdConfig string `toml:"clamd_config"`
}

//go:embed example.toml
var example string

// defaultClamdConfig is where Debian's clamav-daemon keeps clamd.conf.
const defaultClamdConfig = "/etc/clamav/clamd.conf"

func defaults() *Config {
	c := &Config{
		Common:         config.NewCommon("tempfail"),
		Address:        "unix:/run/clamav/clamd.ctl",
		MaxConnections: 20,
		ConnectTimeout: config.Duration{Duration: 2 * time.Second},
		MaxSize:        config.Size{Bytes: 25 << 20},
		OnOversize:     "accept",
		Reply:          "VIRUS FOUND: %v",
		AddHeaders:     "no",
		ClamdConfig:    defaultClamdConfig,
	}
	// clamd may take a while over a large message; the MTA is kept
	// waiting with progress replies meanwhile.
	c.Timeout = config.Duration{Duration: time.Minute}
	return c
}

// Validate checks the section.
func (c *Config) Validate(v *config.Checker, enabled bool) {
	if _, err := clamd.ParseAddresses(c.Address); err != nil {
		v.Fail("address", "%v", err)
	}
	if c.MaxConnections < 1 || c.MaxConnections > 10000 {
		v.Fail("max_connections", "want 1 to 10000")
	}
	if c.ConnectTimeout.Duration <= 0 || c.ConnectTimeout.Duration > time.Minute {
		v.Fail("connect_timeout", "want more than 0 and at most 1m")
	}
	if c.MaxSize.Bytes < 1 || c.MaxSize.Bytes > 4<<30-1 {
		v.Fail("max_size", "want 1 byte to 4G-1 (clamd's stream length is a 32-bit number)")
	}
	v.OneOf("on_oversize", c.OnOversize, "accept", "tempfail", "reject")
	v.OneOf("add_headers", c.AddHeaders, "no", "add", "replace")
	v.Reply("reply", strings.ReplaceAll(c.Reply, "%v", "NAME"))
	if strings.Count(strings.ReplaceAll(c.Reply, "%v", ""), "%") > 0 {
		v.Fail("reply", "the only placeholder is %%v (the virus name)")
	}
	if v.Has("clamd_config") && c.ClamdConfig != "" {
		v.Path("clamd_config", &c.ClamdConfig)
	}
}

func build(c *Config, b *filters.Env) (pipeline.Filter, error) {
	addrs, _ := clamd.ParseAddresses(c.Address) // checked
	c.checkClamdConfig(b, addrs)
	// A reload keeps the pool (its idle sessions to clamd, which server
	// is down) while the addresses and connection settings stay.
	key := fmt.Sprintf("%v %d %s", addrs, c.MaxConnections, c.ConnectTimeout.Duration)
	var pool *shared.Ref[*clamd.Pool]
	if old, ok := b.Predecessor().(*Filter); ok {
		pool = shared.TakeOver(old.pool, key)
	}
	if pool == nil {
		pool = shared.New(clamd.NewPool(addrs, clamd.PoolOptions{MaxConns: c.MaxConnections, DialTimeout: c.ConnectTimeout.Duration, Log: b.Log}), key, (*clamd.Pool).Close)
	}
	// clamd may start after us (or be down for a while): a warning, and
	// on_error for the messages until it answers.
	ctx, cancel := context.WithTimeout(context.Background(), c.ConnectTimeout.Duration+time.Second)
	defer cancel()
	for _, err := range pool.Value().Ping(ctx) {
		b.Warn("address", "%v (until clamd answers, messages get on_error = %q)", err, c.OnError)
	}
	oversize := map[string]Oversize{"accept": OversizeAccept, "tempfail": OversizeTempFail, "reject": OversizeReject}[c.OnOversize]
	headers := map[string]Headers{"no": HeadersNone, "add": HeadersAdd, "replace": HeadersReplace}[c.AddHeaders]
	return New(Options{SharedPool: pool, MaxSize: c.MaxSize.Bytes, Oversize: oversize, Reply: c.Reply, Headers: headers, Log: b.Log, Stats: b.Stats}), nil
}

// checkClamdConfig warns where clamd's own limits disagree with ours, as
// far as its configuration file can be read here (clamd may run on
// another host: a missing default file says nothing).
func (c *Config) checkClamdConfig(b *filters.Env, addrs []clamd.Address) {
	if c.ClamdConfig == "" {
		return
	}
	conf, err := readClamdConfig(c.ClamdConfig, b.MaxFileSize())
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) || c.ClamdConfig != defaultClamdConfig {
			b.Warn("clamd_config", "cannot read clamd's configuration to compare its limits: %v", err)
		}
		return
	}
	file := c.ClamdConfig
	size := func(key string, def int64) int64 {
		s, ok := conf[strings.ToLower(key)]
		if !ok {
			return def
		}
		n, err := userdir.ParseSize(s)
		if err != nil {
			b.Warn("clamd_config", "%s: %s %q is not a size", file, key, s)
			return def
		}
		return n
	}
	ours := c.MaxSize.Bytes
	// clamd 1.x defaults.
	if n := size("StreamMaxLength", 100<<20); n < ours {
		b.Warn("max_size", "%s is more than clamd's StreamMaxLength %s (%s): clamd refuses messages in between, and they get on_oversize only after being streamed; set max_size to at most %s",
			human(ours), human(n), file, human(n))
	}
	if n := size("MaxFileSize", 100<<20); n > 0 && n < ours {
		b.Warn("max_size", "%s is more than clamd's MaxFileSize %s (%s): clamd reports longer messages clean without scanning them; raise MaxFileSize or lower max_size", human(ours), human(n), file)
	}
	if n := size("MaxScanSize", 400<<20); n > 0 && n < ours {
		b.Warn("max_size", "%s is more than clamd's MaxScanSize %s (%s): clamd scans only that much of a longer message", human(ours), human(n), file)
	}
	// Is one of our addresses clamd's socket?
	local, port, tcpAddr := conf["localsocket"], conf["tcpsocket"], conf["tcpaddr"]
	for _, a := range addrs {
		if a.Network == "unix" && samePath(a.Addr, local) {
			return
		}
		if a.Network == "tcp" && port != "" && strings.HasSuffix(a.Addr, ":"+port) && (tcpAddr == "" || strings.HasPrefix(a.Addr, tcpAddr+":") || strings.HasPrefix(a.Addr, "["+tcpAddr+"]:")) {
			return
		}
	}
	where := []string{}
	if local != "" {
		where = append(where, "unix:"+local)
	}
	if port != "" {
		where = append(where, "tcp:"+cmp.Or(tcpAddr, "*")+":"+port)
	}
	if len(where) > 0 && !remoteOnly(addrs) {
		b.Warn("address", "clamd's configuration (%s) has it listen on %s, not on any address given here", file, strings.Join(where, " and "))
	}
}

// samePath compares socket paths through symbolic links of their folders
// (Debian's clamd.conf says /var/run, a link to /run), as far as they
// exist (clamd may not run yet).
func samePath(a, b string) bool {
	return a == b || resolve(a) == resolve(b)
}

func resolve(p string) string {
	dir, rest := filepath.Clean(p), ""
	for dir != "/" && dir != "." {
		if real, err := filepath.EvalSymlinks(dir); err == nil {
			return filepath.Join(real, rest)
		}
		rest = filepath.Join(filepath.Base(dir), rest)
		dir = filepath.Dir(dir)
	}
	return p
}

// remoteOnly: every address is TCP to another host, so the local clamd.conf
// need not describe them.
func remoteOnly(addrs []clamd.Address) bool {
	for _, a := range addrs {
		if a.Network == "unix" || strings.HasPrefix(a.Addr, "127.") || strings.HasPrefix(a.Addr, "localhost:") || strings.HasPrefix(a.Addr, "[::1]:") {
			return false
		}
	}
	return true
}

func human(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dG", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dK", n>>10)
	}
	return fmt.Sprint(n)
}

// readClamdConfig reads clamd.conf's "Key Value" lines; keys lowercased.
func readClamdConfig(path string, maxSize int64) (map[string]string, error) {
	out := map[string]string{}
	err := linefile.ReadFile(path, maxSize, func(_ int, f []string) error {
		if len(f) > 1 {
			out[strings.ToLower(f[0])] = strings.Trim(f[1], `"`)
		}
		return nil
	})
	return out, err
}
