// Package logging sets up the daemon's log/slog logger: text or JSON lines
// on stderr, or the local syslog daemon with a chosen facility and tag, and
// besides either a remote log host over TCP (RFC 5424, octet counting).
// Syslog lines are queued and sent by a goroutine of their own, so a slow or
// absent log daemon never holds up a mail session: past the queue, lines are
// dropped, counted, and reported when the daemon is back.
package logging

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"

	"mailguard/internal/config"
)

// New returns the logger the configuration asks for, and a closer for it
// that sends what is still queued (for at most a few seconds).
func New(c config.Log, stderr io.Writer) (*slog.Logger, io.Closer, error) {
	return NewLeveled(c, stderr, new(slog.LevelVar))
}

// NewLeveled is New with the level held in level, which the caller may
// change later (the daemon does, on reload: log.level needs no restart).
func NewLeveled(c config.Log, stderr io.Writer, level *slog.LevelVar) (*slog.Logger, io.Closer, error) {
	l, err := ParseLevel(c.Level)
	if err != nil {
		return nil, nil, err
	}
	level.Set(l)
	opts := &slog.HandlerOptions{Level: level}
	facility, ok := facilityNumber(cmp.Or(c.SyslogFacility, "mail"))
	if !ok {
		return nil, nil, fmt.Errorf("unknown syslog facility %q", c.SyslogFacility)
	}
	tag := cmp.Or(c.SyslogTag, "mailguard")
	var local slog.Handler
	var closers closers
	switch c.Target {
	case "syslog":
		s, err := newLocalSink(c.SyslogSocket, facility, tag, stderrNotice(stderr))
		if err != nil {
			return nil, nil, err
		}
		closers = append(closers, s)
		local = newLineHandler(s, opts)
	case "", "stderr":
		if c.Format == "json" {
			local = slog.NewJSONHandler(stderr, opts)
		} else {
			local = slog.NewTextHandler(stderr, opts)
		}
	default:
		return nil, nil, fmt.Errorf("unknown log target %q", c.Target)
	}
	if c.Remote == "" {
		return slog.New(local), closers, nil
	}
	// The remote sink tells about itself (unreachable, back, lines
	// dropped) in the local log, which it cannot reach when it is away.
	localLog := slog.New(local)
	r := newRemoteSink(c.Remote, facility, tag, c.RemoteQueue, func(msg string, args ...any) { localLog.Warn(msg, args...) })
	closers = append(closers, r)
	return slog.New(slog.NewMultiHandler(local, newLineHandler(r, opts))), closers, nil
}

// Check reports now what would stop the daemon from logging as configured:
// a local syslog socket that nobody listens on. A log host that is away
// is not an error (its lines wait in the queue); it is the warning.
func Check(ctx context.Context, c config.Log) (warning string, err error) {
	if c.Target == "syslog" {
		conn, err := dialLocal(c.SyslogSocket)
		if err != nil {
			return "", fmt.Errorf("log.target = \"syslog\": %v: no syslog daemon listens there (start rsyslog or systemd-journald, set log.syslog_socket, or log to stderr)", err)
		}
		conn.Close()
	}
	if c.Remote != "" {
		conn, err := dialRemote(ctx, c.Remote)
		if err != nil {
			return fmt.Sprintf("log.remote: the log host does not answer now (%v): lines will wait in a queue of %d, then be dropped and counted, until it does", err, c.RemoteQueue), nil
		}
		conn.Close()
	}
	return "", nil
}

// ParseLevel reads "debug", "info", "warn" or "error" ("" is info).
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if s == "" {
		return slog.LevelInfo, nil
	}
	err := l.UnmarshalText([]byte(s))
	return l, err
}

// lineHandler formats a record as text (without time and level, which the
// syslog header carries) and queues it on a sink.
type lineHandler struct {
	sink  *sink
	mu    *sync.Mutex
	buf   *bytes.Buffer
	inner slog.Handler
}

func newLineHandler(s *sink, opts *slog.HandlerOptions) *lineHandler {
	buf := &bytes.Buffer{}
	o := *opts
	o.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
			return slog.Attr{}
		}
		return a
	}
	return &lineHandler{sink: s, mu: &sync.Mutex{}, buf: buf, inner: slog.NewTextHandler(buf, &o)}
}

func (h *lineHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *lineHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.Reset()
	if err := h.inner.Handle(ctx, r); err != nil {
		return err
	}
	h.sink.send(entry{time: r.Time, severity: severity(r.Level), text: string(bytes.TrimRight(h.buf.Bytes(), "\n"))})
	return nil
}

func (h *lineHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &lineHandler{sink: h.sink, mu: h.mu, buf: h.buf, inner: h.inner.WithAttrs(attrs)}
}

func (h *lineHandler) WithGroup(name string) slog.Handler {
	return &lineHandler{sink: h.sink, mu: h.mu, buf: h.buf, inner: h.inner.WithGroup(name)}
}

// severity maps a level to its syslog severity (RFC 5424 §6.2.1).
func severity(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3 // err
	case l >= slog.LevelWarn:
		return 4 // warning
	case l >= slog.LevelInfo:
		return 6 // info
	}
	return 7 // debug
}

// facilityNumber is the number of one of config.SyslogFacilities.
func facilityNumber(name string) (int, bool) {
	i := slices.Index(config.SyslogFacilities(), name)
	if i >= 12 {
		i += 4 // 12 to 15 (ntp, security, console, clock) are not offered
	}
	return i, i >= 0
}

// stderrNotice is where the local syslog sink tells that it cannot reach
// the syslog daemon: the process's stderr, which a service manager keeps.
func stderrNotice(w io.Writer) func(string, ...any) {
	l := slog.New(slog.NewTextHandler(w, nil))
	return func(msg string, args ...any) { l.Warn(msg, args...) }
}

// Discard is a logger that drops everything, for tools that only report.
func Discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type closers []io.Closer

func (cs closers) Close() error {
	var errs []error
	for _, c := range cs {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "-"
	}
	return h
}
