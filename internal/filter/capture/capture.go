// Package capture writes a copy of the mail stream into a Maildir while a
// switch file exists: to build signatures for a new worm, to feed a new
// scanner with real traffic, or to keep one person's mail under a legal
// hold, without touching the MTA's configuration.
//
// A copy never changes a verdict and never holds mail up: a full disk or a
// write error is logged and counted, the partial file removed, and the
// message goes on. Copies stream to disk as chunks arrive.
package capture

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"mailguard/internal/message"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"mailguard/internal/addrpattern"
	"mailguard/internal/oneline"
	"mailguard/internal/ownmaildir"
	"mailguard/internal/pipeline"
	"mailguard/internal/verdict"
)

// Name is the filter's configuration name.
const Name = "capture"

// Options configure the filter.
type Options struct {
	// Switch is the file whose existence turns capturing on.
	Switch string
	// Dir is the Maildir copies go to; created (mode 0700) if missing.
	Dir string
	// Recipients and Senders select messages: addresses or "@domain",
	// case-insensitive. Both empty: every message. Otherwise a message is
	// copied if a recipient or the sender matches.
	Recipients, Senders []string
	// IncludeRejected copies messages another filter refused, too.
	IncludeRejected bool
	// MaxSize skips (and logs) a copy that would grow larger; 0 is no limit.
	MaxSize int64
	Log     *slog.Logger
	Now     func() time.Time
	// CheckOnly checks the folders that exist and creates none (for
	// check-config).
	CheckOnly bool
	// Predecessor is the filter a reload replaces, if any: a switch
	// already seen on or off is not announced again.
	Predecessor *Filter
}

// Filter is immutable but for its counters; a reload builds a new one.
type Filter struct {
	opts    Options
	sw      *switchFile
	host    string
	seq     atomic.Uint64
	Written atomic.Uint64 // copies written
	Failed  atomic.Uint64 // copies lost to errors
	Skipped atomic.Uint64 // copies over MaxSize
	recips  *addrpattern.Set
	senders *addrpattern.Set
}

// New prepares the capture Maildir and returns the filter.
func New(opts Options) (*Filter, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.CheckOnly {
		if err := ownmaildir.Check(opts.Dir); err != nil {
			return nil, err
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(opts.Dir), 0o755); err != nil {
			return nil, err
		}
		if err := ownmaildir.Prepare(opts.Dir); err != nil {
			return nil, err
		}
	}
	host, _ := os.Hostname()
	// The patterns were checked with the configuration; one that is not
	// a pattern selects nothing.
	recips, _ := addrpattern.NewSet(opts.Recipients)
	senders, _ := addrpattern.NewSet(opts.Senders)
	sw := &switchFile{path: opts.Switch, now: opts.Now}
	if old := opts.Predecessor; old != nil && old.sw.path == opts.Switch {
		sw = old.sw
	}
	return &Filter{opts: opts, sw: sw, host: host, recips: recips, senders: senders}, nil
}

// on reports whether capturing is on, and logs a change of the switch
// the moment the daemon notices it (at most a second after the first
// message that follows it), with the folder: a legal hold needs the
// record of when copying started and stopped. Copies are made exactly
// between the two lines.
func (f *Filter) on() bool {
	on, changed := f.sw.on()
	if changed {
		f.logSwitch(on)
	}
	return on
}

func (f *Filter) logSwitch(on bool) {
	if f.opts.Log == nil {
		return
	}
	if on {
		f.opts.Log.Warn("capture switched on: copying messages", "switch", f.opts.Switch, "dir", f.opts.Dir,
			"selection", f.selection(), "include_rejected", f.opts.IncludeRejected)
		return
	}
	f.opts.Log.Warn("capture switched off: no more copies", "switch", f.opts.Switch, "dir", f.opts.Dir)
}

func (f *Filter) selection() string {
	if f.recips.Len() == 0 && f.senders.Len() == 0 {
		return "every message"
	}
	return fmt.Sprintf("messages to %d recipient and from %d sender patterns", len(f.opts.Recipients), len(f.opts.Senders))
}

// Summary is what the start-up and reload lines say: whether capturing
// is on now (the switch is looked at afresh), and where copies go.
func (f *Filter) Summary() string {
	on, changed := f.sw.look()
	if changed {
		f.logSwitch(on)
	}
	if on {
		return fmt.Sprintf("ON: copying %s into %s (switch %s exists)", f.selection(), f.opts.Dir, f.opts.Switch)
	}
	return fmt.Sprintf("off (no switch file %s); copies would go to %s", f.opts.Switch, f.opts.Dir)
}

func (f *Filter) Name() string { return Name }

// Observer: a copy needs the whole message, whatever other filters decide.
func (f *Filter) Observer() {}

// Stages: while the switch is off the filter needs nothing, so the MTA is
// asked for nothing on its behalf; it never decides.
func (f *Filter) Stages() (reads, decides pipeline.Stage) {
	if !f.on() {
		return 0, 0
	}
	// HELO too: the copy records it (X-Envelope-Helo).
	return pipeline.StageHelo | pipeline.StageMail | pipeline.StageRcpt | pipeline.StageHeader | pipeline.StageEndOfHeaders | pipeline.StageBody | pipeline.StageEndOfMessage, 0
}

const needed = pipeline.StageHeader | pipeline.StageEndOfHeaders | pipeline.StageBody | pipeline.StageEndOfMessage

func (f *Filter) NewCheck(_ context.Context, env *pipeline.Envelope) (pipeline.Check, error) {
	// A connection negotiated while the switch was off carries no body:
	// its messages cannot be copied whole, so they are not copied at all.
	if !f.on() || env.Delivered&needed != needed {
		return nil, nil
	}
	return &check{f: f, env: env}, nil
}

// check is one message's copy. The envelope is complete (every RCPT seen)
// by the first header, which is when the copy is opened.
type check struct {
	pipeline.NopCheck
	f       *Filter
	env     *pipeline.Envelope
	started bool
	file    *os.File
	w       *bufio.Writer
	tmp     string // the copy's name in tmp/, until it is moved or removed
	tmpDir  int    // tmp/, open while the copy is written (tmpOpen)
	tmpOpen bool
	size    int64
	field   []byte // one header field as written
	done    bool   // copy not wanted, abandoned or finished
}

func (c *check) Header(_ context.Context, name, value string) (verdict.Verdict, error) {
	c.start()
	c.field = message.AppendField(c.field[:0], name, value)
	c.writeBytes(c.field)
	return verdict.Pass, nil
}

func (c *check) EndOfHeaders(context.Context, *pipeline.Envelope) (verdict.Verdict, error) {
	c.start()
	c.write("\r\n")
	return verdict.Pass, nil
}

func (c *check) Body(_ context.Context, chunk []byte) (verdict.Verdict, error) {
	c.start()
	c.writeBytes(chunk)
	return verdict.Pass, nil
}

func (c *check) EndOfMessage(_ context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	c.start()
	switch {
	case c.done:
	case env.Final().Final() && !c.f.opts.IncludeRejected:
		c.abandon()
	default:
		c.finish()
	}
	return verdict.Pass, nil
}

// Close removes an unfinished copy (an aborted or refused message).
func (c *check) Close() {
	if !c.done {
		c.abandon()
	}
}

// start makes the selection and opens the copy in tmp/ with the envelope
// recorded in headers of its own.
func (c *check) start() {
	if c.started {
		return
	}
	c.started = true
	f, env := c.f, c.env
	if !f.selected(env) {
		c.done = true
		return
	}
	now := f.opts.Now()
	name := ownmaildir.Name(now, f.seq.Add(1), f.host)
	tmpDir, err := ownmaildir.OpenDir(filepath.Join(f.opts.Dir, "tmp"))
	if err != nil {
		c.fail("cannot create copy", err)
		return
	}
	c.tmpDir, c.tmpOpen = tmpDir, true
	file, err := ownmaildir.CreateIn(tmpDir, name)
	if err != nil {
		c.fail("cannot create copy", err)
		return
	}
	c.tmp = name
	c.file = file
	c.w = bufio.NewWriterSize(file, 64<<10)
	if env.Conn != nil {
		c.write("X-Envelope-Client: ", clean(env.Conn.Hostname), " [", clean(env.Conn.Addr), "]\r\n")
		if env.Conn.Helo != "" {
			c.write("X-Envelope-Helo: ", clean(env.Conn.Helo), "\r\n")
		}
	}
	c.write("X-Envelope-From: <", clean(env.From), ">\r\n")
	rcpts := make([]string, len(env.Rcpts))
	for i, r := range env.Rcpts {
		rcpts[i] = "<" + clean(r) + ">"
	}
	c.write("X-Envelope-To: ", strings.Join(rcpts, ", "), "\r\n")
	if env.QueueID != "" {
		c.write("X-Envelope-Queue-ID: ", clean(env.QueueID), "\r\n")
	}
	c.write("X-Envelope-Date: ", now.Format(time.RFC1123Z), "\r\n")
}

func (c *check) write(parts ...string) {
	for _, p := range parts {
		c.writeBytes([]byte(p))
	}
}

func (c *check) writeBytes(b []byte) {
	if c.done || c.w == nil {
		return
	}
	if c.grow(len(b)); c.done {
		return
	}
	if _, err := c.w.Write(b); err != nil {
		c.fail("write failed", err)
	}
}

// grow accounts for n more bytes, skipping the copy past MaxSize: a
// truncated copy would be mistaken for the message.
func (c *check) grow(n int) {
	c.size += int64(n)
	if max := c.f.opts.MaxSize; max > 0 && c.size > max && !c.done {
		c.f.Skipped.Add(1)
		c.f.opts.Log.Warn("capture: message larger than max_size; not copied", "max_size", max, "queue_id", c.env.QueueID)
		c.abandon()
	}
}

// finish flushes, syncs and moves the copy into new/; write-once from
// there on.
func (c *check) finish() {
	err := c.w.Flush()
	if err == nil {
		err = c.file.Sync()
	}
	if cerr := c.file.Close(); err == nil {
		err = cerr
	}
	c.file = nil
	if err == nil {
		err = ownmaildir.Deliver(c.tmpDir, c.tmp, c.f.opts.Dir, c.size)
	}
	if err != nil {
		c.fail("cannot finish copy", err)
		return
	}
	c.done = true
	c.tmp = ""
	c.closeTmpDir()
	c.f.Written.Add(1)
}

// fail logs and counts a lost copy and removes what was written.
func (c *check) fail(what string, err error) {
	c.f.Failed.Add(1)
	c.f.opts.Log.Error("capture: "+what+"; message not copied, mail flows on", "error", err.Error(), "queue_id", c.env.QueueID)
	c.abandon()
}

func (c *check) abandon() {
	c.done = true
	if c.file != nil {
		c.file.Close()
		c.file = nil
	}
	if c.tmp != "" {
		syscall.Unlinkat(c.tmpDir, c.tmp)
		c.tmp = ""
	}
	c.closeTmpDir()
}

func (c *check) closeTmpDir() {
	if c.tmpOpen {
		syscall.Close(c.tmpDir)
	}
	c.tmpOpen = false
}

// clean keeps an envelope value on one header line.
func clean(s string) string { return oneline.Header(s, 0) }

// switchFile reports whether the switch file exists, looking at most once
// a second. An old filter and its successor share one (same path), so a
// change is noticed, and logged, once.
type switchFile struct {
	path      string
	now       func() time.Time
	checkedAt atomic.Int64
	exists    atomic.Bool
	mu        sync.Mutex
}

// on reports whether the switch is on; changed reports that this call
// looked and found it turned since the last look.
func (s *switchFile) on() (on, changed bool) {
	now := s.now().UnixNano()
	if last := s.checkedAt.Load(); now-last < int64(time.Second) && last != 0 {
		return s.exists.Load(), false
	}
	return s.look()
}

// look checks the file now.
func (s *switchFile) look() (on, changed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Only a regular file counts: a FIFO, a directory or a link in its
	// place is not "capturing on".
	fi, err := os.Lstat(s.path)
	on = err == nil && fi.Mode().IsRegular()
	// The first look that finds it on counts as turning it on: a switch
	// left on across a start or a reload is in the record too.
	changed = on != s.exists.Load()
	s.exists.Store(on)
	s.checkedAt.Store(s.now().UnixNano())
	return on, changed
}

func (f *Filter) selected(env *pipeline.Envelope) bool {
	if f.recips.Len() == 0 && f.senders.Len() == 0 {
		return true
	}
	if f.senders.Match(env.From) {
		return true
	}
	for _, r := range env.Rcpts {
		if f.recips.Match(r) {
			return true
		}
	}
	return false
}
