// Package logging sets up the daemon's log/slog logger: text or JSON lines
// on stderr, or syslog with facility mail.
package logging

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"sync"

	"mailguard/internal/config"
)

// New returns the logger the configuration asks for, and a closer for it.
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
	switch c.Target {
	case "syslog":
		w, err := syslog.New(syslog.LOG_MAIL|syslog.LOG_INFO, c.SyslogTag)
		if err != nil {
			return nil, nil, fmt.Errorf("cannot reach syslog: %v (set log.target = \"stderr\" where no syslog daemon runs)", err)
		}
		return slog.New(newSyslogHandler(w, opts)), w, nil
	case "", "stderr":
		if c.Format == "json" {
			return slog.New(slog.NewJSONHandler(stderr, opts)), nopCloser{}, nil
		}
		return slog.New(slog.NewTextHandler(stderr, opts)), nopCloser{}, nil
	}
	return nil, nil, fmt.Errorf("unknown log target %q", c.Target)
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

// syslogHandler formats a record as text (without time and level, which
// syslog adds) and sends it with the matching syslog severity.
type syslogHandler struct {
	w     *syslog.Writer
	mu    *sync.Mutex
	buf   *bytes.Buffer
	inner slog.Handler
}

func newSyslogHandler(w *syslog.Writer, opts *slog.HandlerOptions) *syslogHandler {
	buf := &bytes.Buffer{}
	o := *opts
	o.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
			return slog.Attr{}
		}
		return a
	}
	return &syslogHandler{w: w, mu: &sync.Mutex{}, buf: buf, inner: slog.NewTextHandler(buf, &o)}
}

func (h *syslogHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *syslogHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.Reset()
	if err := h.inner.Handle(ctx, r); err != nil {
		return err
	}
	line := string(bytes.TrimRight(h.buf.Bytes(), "\n"))
	switch {
	case r.Level >= slog.LevelError:
		return h.w.Err(line)
	case r.Level >= slog.LevelWarn:
		return h.w.Warning(line)
	case r.Level >= slog.LevelInfo:
		return h.w.Info(line)
	default:
		return h.w.Debug(line)
	}
}

func (h *syslogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &syslogHandler{w: h.w, mu: h.mu, buf: h.buf, inner: h.inner.WithAttrs(attrs)}
}

func (h *syslogHandler) WithGroup(name string) slog.Handler {
	return &syslogHandler{w: h.w, mu: h.mu, buf: h.buf, inner: h.inner.WithGroup(name)}
}

// Discard is a logger that drops everything, for tools that only report.
func Discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type nopCloser struct{}

func (nopCloser) Close() error { return nil }
