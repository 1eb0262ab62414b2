// Package config reads mailguard's TOML configuration file. Every problem
// is reported with file:line, and all of them at once, so `check-config`
// can show a postmaster everything to fix in one go.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"maps"
	"reflect"
	"slices"
	"sort"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"mailguard/internal/fileerr"
	"mailguard/internal/safefile"
	"mailguard/internal/userdir"

	"mailguard/internal/listen"
)

// Defaults used when a key is absent (and when there is no file at all).
const (
	// DefaultListen avoids the ports other milters take by convention
	// (OpenDKIM 8891, OpenDMARC 8893, OpenARC 8894), so that a first
	// start neither fails nor has the MTA talk to another milter.
	DefaultListen          = "inet:127.0.0.1:8897"
	DefaultSocketMode      = 0o660
	DefaultDrainTimeout    = 30 * time.Second
	DefaultIdleTimeout     = 10 * time.Minute
	DefaultSummaryInterval = 5 * time.Minute
	DefaultSyslogSocket    = "/dev/log"
	// DefaultRemoteQueue lines (about 300 bytes each) wait for a log host
	// that is away: a few minutes of a busy MX's decisions.
	DefaultRemoteQueue = 10000
	// DefaultMaxConnections and DefaultMaxRecipients: see README.
	DefaultMaxConnections = 1000
	DefaultMaxRecipients  = 1000
	// DefaultMaxFileSize bounds a data file (signatures, users, blocklist).
	DefaultMaxFileSize = 64 << 20
	// maxConfigSize bounds the configuration file itself.
	maxConfigSize = 1 << 20
)

// Config is the whole configuration, validated.
type Config struct {
	File       string // "" when running on built-in defaults
	Listen     listen.Addr
	SocketMode os.FileMode
	// SocketOwner and SocketGroup own a unix socket (and the folder it is
	// created in); -1 leaves the daemon's own.
	SocketOwner, SocketGroup int
	Filters                  []string
	DrainTimeout             time.Duration
	IdleTimeout              time.Duration
	// PidFile is where the daemon writes its process id ("" for none), and
	// PidFile + ".reload" the outcome of its latest reload.
	PidFile string
	// MaxFileSize bounds each data file a filter reads.
	MaxFileSize int64
	// MaxConnections bounds the milter connections open at once.
	MaxConnections int
	// MaxRecipients bounds one message's recipients.
	MaxRecipients int
	// AllowRoot lets the daemon run as root (it refuses otherwise, once
	// it has a configuration file).
	AllowRoot bool
	Log       Log
	HTTP      HTTP
	// Warnings are problems that do not stop the configuration from
	// running, each "FILE:LINE: what".
	Warnings []string
	// Bad names the sections with problems (when Parse returns an error
	// with the configuration).
	Bad map[string]bool
	// Sections holds every known filter's section, [name], decoded and
	// checked (defaults where the file says nothing), enabled or not.
	Sections map[string]Section

	lines map[string]int // dotted key -> line in File
}

// Log says where log lines go.
type Log struct {
	Target          string // "stderr" or "syslog"
	Level           string // "debug", "info", "warn", "error"
	Format          string // "text" or "json" (stderr only)
	SyslogTag       string
	SyslogFacility  string // a name from SyslogFacilities
	SyslogSocket    string // the local syslog daemon's socket
	Remote          string // "HOST:PORT" of a log host over TCP, "" for none
	RemoteQueue     int    // lines held while the log host is slow or away
	SummaryInterval time.Duration
}

// SyslogFacilities returns the facility names log.syslog_facility takes
// (RFC 5424 §6.2.1: 0 to 11, then local0 to local7, 16 to 23).
func SyslogFacilities() []string {
	return []string{"kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
		"local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"}
}

// raw mirrors the file's global keys; pointers tell "absent" from "zero".
type raw struct {
	Listen         *string  `toml:"listen"`
	SocketMode     *string  `toml:"socket_mode"`
	SocketOwner    *string  `toml:"socket_owner"`
	SocketGroup    *string  `toml:"socket_group"`
	Filters        []string `toml:"filters"`
	DrainTimeout   *string  `toml:"drain_timeout"`
	IdleTimeout    *string  `toml:"idle_timeout"`
	MaxFileSize    *string  `toml:"max_file_size"`
	PidFile        *string  `toml:"pid_file"`
	MaxConnections *int     `toml:"max_connections"`
	MaxRecipients  *int     `toml:"max_recipients"`
	AllowRoot      *bool    `toml:"allow_root"`
	Log            struct {
		Target          *string `toml:"target"`
		Level           *string `toml:"level"`
		Format          *string `toml:"format"`
		SyslogTag       *string `toml:"syslog_tag"`
		SyslogFacility  *string `toml:"syslog_facility"`
		SyslogSocket    *string `toml:"syslog_socket"`
		Remote          *string `toml:"remote"`
		RemoteQueue     *int    `toml:"remote_queue"`
		SummaryInterval *string `toml:"summary_interval"`
	} `toml:"log"`
	HTTP rawHTTP `toml:"http"`
}

// Sections maps each known filter's name to a constructor of its section
// with the defaults set. The filter registry provides it.
type Sections map[string]func() Section

// Error is one problem at a line of a file: the one type every file
// mailguard reads reports with.
type Error = fileerr.Error

// Default returns the built-in configuration: what `serve` runs on without
// a config file.
func Default(sections Sections) *Config {
	addr, _ := listen.Parse(DefaultListen)
	c := &Config{
		Listen:         addr,
		SocketMode:     DefaultSocketMode,
		SocketOwner:    -1,
		SocketGroup:    -1,
		Filters:        []string{"virus"},
		DrainTimeout:   DefaultDrainTimeout,
		IdleTimeout:    DefaultIdleTimeout,
		MaxFileSize:    DefaultMaxFileSize,
		MaxConnections: DefaultMaxConnections,
		MaxRecipients:  DefaultMaxRecipients,
		Log: Log{Target: "stderr", Level: "info", Format: "text", SyslogTag: "mailguard", SyslogFacility: "mail", SyslogSocket: DefaultSyslogSocket,
			RemoteQueue: DefaultRemoteQueue, SummaryInterval: DefaultSummaryInterval},
		HTTP:     HTTP{Listen: DefaultHTTPListen},
		Sections: map[string]Section{},
	}
	for name, fresh := range sections {
		c.Sections[name] = fresh()
	}
	return c
}

// Load reads and validates a config file. The error, if any, joins every
// problem found, each an *Error.
func Load(path string, sections Sections) (*Config, error) {
	data, err := safefile.ReadFile(path, maxConfigSize)
	if err != nil {
		return nil, &Error{File: path, Msg: err.Error()}
	}
	return Parse(path, data, sections)
}

// Parse validates config text; file names it in errors. Each filter's
// section is decoded into the type its constructor returns and checked by
// its own code.
func Parse(file string, data []byte, sections Sections) (*Config, error) {
	if safefile.HasBOM(data) {
		return nil, &Error{File: file, Line: 1, Msg: safefile.BOMProblem}
	}
	c := Default(sections)
	c.File = file
	var r raw
	doc, names := document(&r, c.Sections)
	// Plain TOML values first: a syntax error stops here, with its line.
	var tree map[string]any
	if err := toml.Unmarshal(data, &tree); err != nil {
		return nil, decodeError(file, err)
	}
	lines, err := keyLines(data)
	if err != nil { // the decoder accepted it, so the parser should too
		return nil, &Error{File: file, Msg: err.Error()}
	}
	c.lines = lines
	v := &Checker{file: file, lines: lines}
	checkTypes(tree, doc.Type(), "", v)
	clean, err := toml.Marshal(tree)
	if err == nil {
		err = toml.NewDecoder(bytes.NewReader(clean)).DisallowUnknownFields().Decode(doc.Addr().Interface())
	}
	if err != nil { // checkTypes let through only what the decoder takes
		return nil, &Error{File: file, Msg: err.Error()}
	}
	copyRaw(&r, doc)
	field(v, &c.Listen, r.Listen, "listen", listen.Parse)
	field(v, &c.SocketMode, r.SocketMode, "socket_mode", parseMode)
	field(v, &c.SocketOwner, r.SocketOwner, "socket_owner", lookupUser)
	field(v, &c.SocketGroup, r.SocketGroup, "socket_group", lookupGroup)
	if r.Filters != nil {
		c.Filters = v.filters(r.Filters, sections)
		if len(r.Filters) == 0 {
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s:%d: filters = []: no filter runs, so every message is accepted unexamined", file, lines["filters"]))
		}
	}
	field(v, &c.DrainTimeout, r.DrainTimeout, "drain_timeout", parseDuration)
	field(v, &c.IdleTimeout, r.IdleTimeout, "idle_timeout", parseDuration)
	field(v, &c.MaxFileSize, r.MaxFileSize, "max_file_size", positiveSize)
	field(v, &c.PidFile, r.PidFile, "pid_file", func(s string) (string, error) {
		if strings.TrimSpace(s) == "" {
			return "", errEmpty
		}
		if !filepath.IsAbs(s) {
			s = filepath.Join(filepath.Dir(file), s)
		}
		return s, nil
	})
	intField(v, &c.MaxConnections, r.MaxConnections, "max_connections", 1, 1000000)
	intField(v, &c.MaxRecipients, r.MaxRecipients, "max_recipients", 1, 100000)
	field(v, &c.Log.Target, r.Log.Target, "log.target", oneOf("stderr", "syslog"))
	field(v, &c.Log.Level, r.Log.Level, "log.level", oneOf("debug", "info", "warn", "error"))
	field(v, &c.Log.Format, r.Log.Format, "log.format", oneOf("text", "json"))
	field(v, &c.Log.SyslogTag, r.Log.SyslogTag, "log.syslog_tag", syslogTag)
	field(v, &c.Log.SyslogFacility, r.Log.SyslogFacility, "log.syslog_facility", oneOf(SyslogFacilities()...))
	field(v, &c.Log.SyslogSocket, r.Log.SyslogSocket, "log.syslog_socket", absPath)
	field(v, &c.Log.Remote, r.Log.Remote, "log.remote", hostPort)
	intField(v, &c.Log.RemoteQueue, r.Log.RemoteQueue, "log.remote_queue", 1, 1000000)
	if r.AllowRoot != nil {
		c.AllowRoot = *r.AllowRoot
	}
	field(v, &c.Log.SummaryInterval, r.Log.SummaryInterval, "log.summary_interval", parseDuration)
	checkHTTP(v, c, r.HTTP, file)
	for _, name := range names {
		v.checkSection(name, c.Sections[name], slices.Contains(c.Filters, name))
	}
	if len(v.errs) > 0 {
		// The configuration is refused; what could be read is returned
		// too, so check-config can go on to check the files it names.
		c.Bad = v.bad
		sort.SliceStable(v.errs, func(i, j int) bool { return line(v.errs[i]) < line(v.errs[j]) })
		return c, errors.Join(v.errs...)
	}
	return c, nil
}

// document builds the type the decoder fills: the global keys of raw,
// then one field per filter section, [name], pointing at the section
// (so keys absent from the file keep the section's defaults).
func document(r *raw, sections map[string]Section) (reflect.Value, []string) {
	rt := reflect.TypeOf(*r)
	fields := make([]reflect.StructField, 0, rt.NumField()+len(sections))
	for i := 0; i < rt.NumField(); i++ {
		fields = append(fields, rt.Field(i))
	}
	names := slices.Sorted(maps.Keys(sections))
	for i, name := range names {
		fields = append(fields, reflect.StructField{
			Name: fmt.Sprintf("Section%d", i),
			Type: reflect.TypeOf(sections[name]),
			Tag:  reflect.StructTag(fmt.Sprintf("toml:%q", name)),
		})
	}
	doc := reflect.New(reflect.StructOf(fields)).Elem()
	for i, name := range names {
		doc.Field(rt.NumField() + i).Set(reflect.ValueOf(sections[name]))
	}
	return doc, names
}

func copyRaw(r *raw, doc reflect.Value) {
	rv := reflect.ValueOf(r).Elem()
	for i := 0; i < rv.NumField(); i++ {
		rv.Field(i).Set(doc.Field(i))
	}
}

func line(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Line
	}
	return 0
}

// Line returns the line of a dotted key in the file, or 0. Filters use it
// to place errors about what a key names (a signature file that fails to
// load is reported at the key that names it).
func (c *Config) Line(key string) int { return c.lines[key] }

func (v *Checker) filters(names []string, known Sections) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range names {
		switch {
		case known[n] == nil:
			v.fail("filters", "unknown filter %q (known: %s)", n, strings.Join(slices.Sorted(maps.Keys(known)), ", "))
		case seen[n]:
			v.fail("filters", "filter %q listed twice", n)
		default:
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

func intField(v *Checker, dst *int, val *int, key string, lo, hi int) {
	if val == nil {
		return
	}
	if *val < lo || *val > hi {
		v.fail(key, "%d: want a number from %d to %d", *val, lo, hi)
		return
	}
	*dst = *val
}

func positiveSize(s string) (int64, error) {
	n, err := userdir.ParseSize(s)
	if err == nil && n == 0 {
		err = fmt.Errorf("%q: must be more than 0", s)
	}
	return n, err
}

// lookupUser reads a user name or number.
func lookupUser(s string) (int, error) {
	return lookupID(s, "user", func(name string) (string, error) {
		u, err := user.Lookup(name)
		if err != nil {
			return "", err
		}
		return u.Uid, nil
	})
}

// lookupGroup reads a group name or number.
func lookupGroup(s string) (int, error) {
	return lookupID(s, "group", func(name string) (string, error) {
		g, err := user.LookupGroup(name)
		if err != nil {
			return "", err
		}
		return g.Gid, nil
	})
}

func lookupID(s, kind string, lookup func(string) (string, error)) (int, error) {
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return n, nil
	}
	id, err := lookup(s)
	if err != nil {
		return 0, fmt.Errorf("no %s %q on this system", kind, s)
	}
	return strconv.Atoi(id)
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
		if !slices.Contains(choices, s) {
			return "", fmt.Errorf("%q: want one of %s", s, strings.Join(choices, ", "))
		}
		return s, nil
	}
}

// syslogTag is an RFC 5424 APP-NAME: 1 to 48 printable ASCII characters.
func syslogTag(s string) (string, error) {
	if s == "" || len(s) > 48 || strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return "", fmt.Errorf("%q: want 1 to 48 printable ASCII characters without spaces", s)
	}
	return s, nil
}

func absPath(s string) (string, error) {
	if !filepath.IsAbs(s) {
		return "", fmt.Errorf("%q is not an absolute path", s)
	}
	return filepath.Clean(s), nil
}

func hostPort(s string) (string, error) {
	if s == "" {
		return "", nil // no log host
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return "", fmt.Errorf("%q: want HOST:PORT, such as \"loghost.example.edu:514\" or \"[2001:db8::1]:514\"", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("%q: port %q is not a number from 1 to 65535", s, port)
	}
	return s, nil
}

func nonEmpty(s string) (string, error) {
	if strings.TrimSpace(s) == "" {
		return "", errEmpty
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
