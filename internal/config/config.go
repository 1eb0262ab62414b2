// Package config reads mailguard's TOML configuration file. Every problem
// is reported with file:line, and all of them at once, so `check-config`
// can show a postmaster everything to fix in one go.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"mailguard/internal/listen"
	"mailguard/internal/userdir"
)

// Defaults used when a key is absent (and when there is no file at all).
const (
	DefaultListen          = "inet:127.0.0.1:8891"
	DefaultSocketMode      = 0o660
	DefaultDrainTimeout    = 30 * time.Second
	DefaultIdleTimeout     = 10 * time.Minute
	DefaultSummaryInterval = 5 * time.Minute
)

// Config is the whole configuration, validated.
type Config struct {
	File         string // "" when running on built-in defaults
	Listen       listen.Addr
	SocketMode   os.FileMode
	Filters      []string
	DrainTimeout time.Duration
	IdleTimeout  time.Duration
	Log          Log
	Virus        Virus
	Quota        Quota
	Capture      Capture
	Senders      Senders

	lines map[string]int // dotted key -> line in File
}

// Log says where log lines go.
type Log struct {
	Target          string // "stderr" or "syslog"
	Level           string // "debug", "info", "warn", "error"
	Format          string // "text" or "json" (stderr only)
	SyslogTag       string
	SummaryInterval time.Duration
}

// Virus configures the signature filter.
type Virus struct {
	// Signatures is the signature file; "" means the bundled examples.
	Signatures  string
	Reply       string
	IncludeName bool
	OnError     string
}

// Quota configures the mailbox-full filter.
type Quota struct {
	Users              string // the user directory file
	DefaultQuota       int64  // bytes; 0 is unlimited
	Margin             int64  // bytes
	Reply              string
	ExemptSenders      []string
	CaseSensitiveLocal bool
	RecipientDelimiter string
	OnError            string
}

// Capture configures the copy of the mail stream.
type Capture struct {
	Switch          string
	Dir             string
	Recipients      []string
	Senders         []string
	IncludeRejected bool
	MaxSize         int64 // bytes; 0 is no limit
	OnError         string
}

// Senders configures the per-user sender blocklists.
type Senders struct {
	Blocklist          string
	Reply              string
	RecipientDelimiter string
	OnError            string
}

// raw mirrors the file; pointers tell "absent" from "zero".
type raw struct {
	Listen       *string  `toml:"listen"`
	SocketMode   *string  `toml:"socket_mode"`
	Filters      []string `toml:"filters"`
	DrainTimeout *string  `toml:"drain_timeout"`
	IdleTimeout  *string  `toml:"idle_timeout"`
	Log          struct {
		Target          *string `toml:"target"`
		Level           *string `toml:"level"`
		Format          *string `toml:"format"`
		SyslogTag       *string `toml:"syslog_tag"`
		SummaryInterval *string `toml:"summary_interval"`
	} `toml:"log"`
	Virus struct {
		Signatures  *string `toml:"signatures"`
		Reply       *string `toml:"reply"`
		IncludeName *bool   `toml:"include_name"`
		OnError     *string `toml:"on_error"`
	} `toml:"virus"`
	Quota struct {
		Users              *string  `toml:"users"`
		DefaultQuota       *string  `toml:"default_quota"`
		Margin             *string  `toml:"margin"`
		Reply              *string  `toml:"reply"`
		ExemptSenders      []string `toml:"exempt_senders"`
		LocalPartCase      *string  `toml:"local_part_case"`
		RecipientDelimiter *string  `toml:"recipient_delimiter"`
		OnError            *string  `toml:"on_error"`
	} `toml:"quota"`
	Capture struct {
		Switch          *string  `toml:"switch"`
		Dir             *string  `toml:"dir"`
		Recipients      []string `toml:"recipients"`
		Senders         []string `toml:"senders"`
		IncludeRejected *bool    `toml:"include_rejected"`
		MaxSize         *string  `toml:"max_size"`
		OnError         *string  `toml:"on_error"`
	} `toml:"capture"`
	Senders struct {
		Blocklist          *string `toml:"blocklist"`
		Reply              *string `toml:"reply"`
		RecipientDelimiter *string `toml:"recipient_delimiter"`
		OnError            *string `toml:"on_error"`
	} `toml:"senders"`
}

// KnownFilters lists the filter names a config may use, in no order.
var KnownFilters = []string{"virus", "quota", "capture", "senders"}

// Error is one problem with the configuration.
type Error struct {
	File string
	Line int // 0 when the problem has no line (a missing file)
	Msg  string
}

func (e *Error) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// Default returns the built-in configuration: what `serve` runs on without
// a config file.
func Default() *Config {
	addr, _ := listen.Parse(DefaultListen)
	return &Config{
		Listen:       addr,
		SocketMode:   DefaultSocketMode,
		Filters:      []string{"virus"},
		DrainTimeout: DefaultDrainTimeout,
		IdleTimeout:  DefaultIdleTimeout,
		Log:          Log{Target: "stderr", Level: "info", Format: "text", SyslogTag: "mailguard", SummaryInterval: DefaultSummaryInterval},
		Virus:        Virus{Reply: "VIRUS FOUND", OnError: "tempfail"},
		Quota: Quota{Margin: 25 << 10, Reply: "Mailbox full", RecipientDelimiter: "+", OnError: "accept",
			ExemptSenders: []string{"postmaster@*", "mailer-daemon@*", "<>"}},
		Capture: Capture{MaxSize: 100 << 20, OnError: "accept", Recipients: []string{}, Senders: []string{}},
		Senders: Senders{Reply: "Sender blocked by recipient", RecipientDelimiter: "+", OnError: "accept"},
	}
}

// Load reads and validates a config file. The error, if any, joins every
// problem found, each an *Error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{File: path, Msg: err.Error()}
	}
	return Parse(path, data)
}

// Parse validates config text; file names it in errors.
func Parse(file string, data []byte) (*Config, error) {
	var r raw
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	var unknown []error
	if err := dec.Decode(&r); err != nil {
		// Unknown keys still leave the rest decoded: go on, so every
		// problem is reported at once. Anything else stops here.
		var strict *toml.StrictMissingError
		if !errors.As(err, &strict) {
			return nil, decodeError(file, err)
		}
		unknown = unknownKeys(file, strict)
	}
	lines, err := keyLines(data)
	if err != nil { // the decoder accepted it, so the parser should too
		return nil, &Error{File: file, Msg: err.Error()}
	}
	v := &validator{file: file, lines: lines, errs: unknown}
	c := Default()
	c.File = file
	c.lines = lines
	field(v, &c.Listen, r.Listen, "listen", listen.Parse)
	field(v, &c.SocketMode, r.SocketMode, "socket_mode", parseMode)
	if r.Filters != nil {
		c.Filters = v.filters(r.Filters)
	}
	field(v, &c.DrainTimeout, r.DrainTimeout, "drain_timeout", parseDuration)
	field(v, &c.IdleTimeout, r.IdleTimeout, "idle_timeout", parseDuration)
	field(v, &c.Log.Target, r.Log.Target, "log.target", oneOf("stderr", "syslog"))
	field(v, &c.Log.Level, r.Log.Level, "log.level", oneOf("debug", "info", "warn", "error"))
	field(v, &c.Log.Format, r.Log.Format, "log.format", oneOf("text", "json"))
	field(v, &c.Log.SyslogTag, r.Log.SyslogTag, "log.syslog_tag", nonEmpty)
	field(v, &c.Log.SummaryInterval, r.Log.SummaryInterval, "log.summary_interval", parseDuration)
	field(v, &c.Virus.Signatures, r.Virus.Signatures, "virus.signatures", relativeTo(file))
	field(v, &c.Virus.Reply, r.Virus.Reply, "virus.reply", replyText)
	field(v, &c.Virus.OnError, r.Virus.OnError, "virus.on_error", oneOf("tempfail", "accept", "reject"))
	if r.Virus.IncludeName != nil {
		c.Virus.IncludeName = *r.Virus.IncludeName
	}
	field(v, &c.Quota.Users, r.Quota.Users, "quota.users", relativeTo(file))
	field(v, &c.Quota.DefaultQuota, r.Quota.DefaultQuota, "quota.default_quota", parseSize)
	field(v, &c.Quota.Margin, r.Quota.Margin, "quota.margin", parseSize)
	field(v, &c.Quota.Reply, r.Quota.Reply, "quota.reply", replyText)
	field(v, &c.Quota.OnError, r.Quota.OnError, "quota.on_error", oneOf("tempfail", "accept", "reject"))
	field(v, &c.Quota.RecipientDelimiter, r.Quota.RecipientDelimiter, "quota.recipient_delimiter", delimiter)
	var localCase string
	field(v, &localCase, r.Quota.LocalPartCase, "quota.local_part_case", oneOf("insensitive", "sensitive"))
	c.Quota.CaseSensitiveLocal = localCase == "sensitive"
	if r.Quota.ExemptSenders != nil {
		c.Quota.ExemptSenders = r.Quota.ExemptSenders
		for _, p := range r.Quota.ExemptSenders {
			if err := senderPattern(p); err != nil {
				v.fail("quota.exempt_senders", "%v", err)
			}
		}
	}
	field(v, &c.Capture.Switch, r.Capture.Switch, "capture.switch", relativeTo(file))
	field(v, &c.Capture.Dir, r.Capture.Dir, "capture.dir", relativeTo(file))
	field(v, &c.Capture.MaxSize, r.Capture.MaxSize, "capture.max_size", parseSize)
	field(v, &c.Capture.OnError, r.Capture.OnError, "capture.on_error", oneOf("tempfail", "accept", "reject"))
	if r.Capture.IncludeRejected != nil {
		c.Capture.IncludeRejected = *r.Capture.IncludeRejected
	}
	for key, list := range map[string][]string{"capture.recipients": r.Capture.Recipients, "capture.senders": r.Capture.Senders} {
		for _, a := range list {
			if strings.Count(a, "@") != 1 || strings.ContainsAny(a, " \t") || strings.HasSuffix(a, "@") {
				v.fail(key, "%q: want an address or @domain", a)
			}
		}
	}
	if r.Capture.Recipients != nil {
		c.Capture.Recipients = r.Capture.Recipients
	}
	if r.Capture.Senders != nil {
		c.Capture.Senders = r.Capture.Senders
	}
	field(v, &c.Senders.Blocklist, r.Senders.Blocklist, "senders.blocklist", relativeTo(file))
	field(v, &c.Senders.Reply, r.Senders.Reply, "senders.reply", replyText)
	field(v, &c.Senders.RecipientDelimiter, r.Senders.RecipientDelimiter, "senders.recipient_delimiter", delimiter)
	field(v, &c.Senders.OnError, r.Senders.OnError, "senders.on_error", oneOf("tempfail", "accept", "reject"))
	if contains(c.Filters, "capture") && (c.Capture.Switch == "" || c.Capture.Dir == "") {
		v.fail("filters", "the capture filter needs [capture] switch = \"FILE\" and dir = \"DIR\"")
	}
	if contains(c.Filters, "senders") && c.Senders.Blocklist == "" {
		v.fail("filters", "the senders filter needs [senders] blocklist = \"FILE\"")
	}
	if contains(c.Filters, "quota") && c.Quota.Users == "" {
		v.fail("filters", "the quota filter needs [quota] users = \"FILE\" (the user directory)")
	}
	if len(v.errs) > 0 {
		return nil, errors.Join(v.errs...)
	}
	return c, nil
}

// Line returns the line of a dotted key in the file, or 0. Filters use it
// to place errors about what a key names (a signature file that fails to
// load is reported at the key that names it).
func (c *Config) Line(key string) int { return c.lines[key] }

type validator struct {
	file  string
	lines map[string]int
	errs  []error
}

func (v *validator) fail(key, format string, args ...any) {
	v.errs = append(v.errs, &Error{File: v.file, Line: v.lines[key], Msg: key + ": " + fmt.Sprintf(format, args...)})
}

// field parses an optional string value into dst, recording any error.
func field[T any](v *validator, dst *T, val *string, key string, parse func(string) (T, error)) {
	if val == nil {
		return
	}
	x, err := parse(*val)
	if err != nil {
		v.fail(key, "%v", err)
		return
	}
	*dst = x
}

func (v *validator) filters(names []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range names {
		switch {
		case !contains(KnownFilters, n):
			v.fail("filters", "unknown filter %q (known: %s)", n, strings.Join(KnownFilters, ", "))
		case seen[n]:
			v.fail("filters", "filter %q listed twice", n)
		default:
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func parseMode(s string) (os.FileMode, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("%q is not an octal file mode such as \"0660\"", s)
	}
	return os.FileMode(m), nil
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration such as \"30s\" or \"5m\"", s)
	}
	return d, nil
}

func oneOf(choices ...string) func(string) (string, error) {
	return func(s string) (string, error) {
		if !contains(choices, s) {
			return "", fmt.Errorf("%q: want one of %s", s, strings.Join(choices, ", "))
		}
		return s, nil
	}
}

func nonEmpty(s string) (string, error) {
	if strings.TrimSpace(s) == "" {
		return "", errors.New("must not be empty")
	}
	return s, nil
}

func parseSize(s string) (int64, error) { return userdir.ParseSize(s) }

func delimiter(s string) (string, error) {
	if len(s) > 1 || strings.ContainsAny(s, "@ \t") {
		return "", errors.New("want one character such as \"+\" or \"-\", or \"\" for none")
	}
	return s, nil
}

// senderPattern checks an exempt-sender pattern: "<>", "local@*",
// "*@domain" or an address.
func senderPattern(p string) error {
	if p == "<>" || strings.Count(p, "@") == 1 && !strings.ContainsAny(p, " \t") && p[0] != '@' && p[len(p)-1] != '@' {
		return nil
	}
	return fmt.Errorf("exempt sender %q: want \"<>\", \"local@*\", \"*@domain\" or an address", p)
}

// relativeTo resolves a path named in the config file against the file's
// directory, so a configuration means the same wherever the daemon starts.
func relativeTo(configFile string) func(string) (string, error) {
	return func(s string) (string, error) {
		if _, err := nonEmpty(s); err != nil {
			return "", err
		}
		if filepath.IsAbs(s) {
			return s, nil
		}
		return filepath.Join(filepath.Dir(configFile), s), nil
	}
}

func replyText(s string) (string, error) {
	if strings.TrimSpace(s) == "" || len(s) > 400 {
		return "", errors.New("reply text must be 1 to 400 characters")
	}
	for _, c := range s {
		if c < 0x20 || c > 0x7e {
			return "", errors.New("reply text must be printable ASCII on one line")
		}
	}
	return s, nil
}

// keyLines maps every dotted key in the document to its line.
func keyLines(data []byte) (map[string]int, error) {
	lines := map[string]int{}
	var p unstable.Parser
	p.Reset(data)
	var table []string
	for p.NextExpression() {
		n := p.Expression()
		switch n.Kind {
		case unstable.Table, unstable.ArrayTable:
			var line int
			table, line = appendKey(&p, n, nil)
			lines[strings.Join(table, ".")] = line
		case unstable.KeyValue:
			key, line := appendKey(&p, n, append([]string(nil), table...))
			lines[strings.Join(key, ".")] = line
		}
	}
	return lines, p.Error()
}

// appendKey appends the parts of n's key to prefix and returns them with
// the line where the key starts.
func appendKey(p *unstable.Parser, n *unstable.Node, prefix []string) ([]string, int) {
	line := 0
	for it := n.Key(); it.Next(); {
		k := it.Node()
		prefix = append(prefix, string(k.Data))
		if line == 0 {
			line = p.Shape(k.Raw).Start.Line
		}
	}
	return prefix, line
}

func unknownKeys(file string, strict *toml.StrictMissingError) []error {
	var errs []error
	for i := range strict.Errors {
		e := &strict.Errors[i]
		row, _ := e.Position()
		errs = append(errs, &Error{File: file, Line: row, Msg: fmt.Sprintf("unknown key %q", strings.Join(e.Key(), "."))})
	}
	return errs
}

func decodeError(file string, err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, _ := de.Position()
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if k := de.Key(); len(k) > 0 {
			msg = strings.Join(k, ".") + ": " + msg
		}
		return &Error{File: file, Line: row, Msg: msg}
	}
	return &Error{File: file, Msg: err.Error()}
}
