// Package clamav is the anti-virus filter: it streams each message, as the
// MTA hands it over, to ClamAV's clamd (INSTREAM) and refuses a message
// clamd finds infected with "550 5.7.0" at the end of DATA, so the
// message is never accepted, its forged sender never bounced to.
//
// The stream starts at the end of the header, while the body is still
// arriving, and carries the message as it will be delivered: the header
// fields in order, the blank line, the body. Nothing is buffered but the
// header. A message refused by an earlier filter (the signature filter,
// say) stops its stream there, so clamd never scans it.
package clamav

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"mailguard/internal/clamd"
	"mailguard/internal/mailfrom"
	"mailguard/internal/message"
	"mailguard/internal/pipeline"
	"mailguard/internal/shared"
	"mailguard/internal/stats"
	"mailguard/internal/verdict"
)

// Name is the filter's configuration name.
const Name = "clamav"

// Oversize is what becomes of a message longer than MaxSize.
type Oversize uint8

const (
	// OversizeAccept delivers it unscanned: logged, counted, and marked
	// "X-Virus-Status: Unscanned" when headers are added.
	OversizeAccept Oversize = iota
	// OversizeTempFail refuses it for now (451 4.3.0).
	OversizeTempFail
	// OversizeReject refuses it (552 5.3.4).
	OversizeReject
)

// Headers is which X-Virus-* fields the filter adds to scanned mail.
type Headers uint8

const (
	// HeadersNone adds none.
	HeadersNone Headers = iota
	// HeadersAdd adds X-Virus-Scanned and X-Virus-Status.
	HeadersAdd
	// HeadersReplace removes every X-Virus-* field the message arrived
	// with (another host's, or forged), then adds its own.
	HeadersReplace
)

// Options configure the filter.
type Options struct {
	Pool       *clamd.Pool
	SharedPool *shared.Ref[*clamd.Pool]
	// MaxSize is the longest message streamed to clamd; it must not be
	// more than clamd's StreamMaxLength.
	MaxSize  int64
	Oversize Oversize
	// Reply is the text after "550 5.7.0"; "%v" stands for the virus name.
	Reply   string
	Headers Headers
	Log     *slog.Logger
	Stats   *stats.Counter
}

// Filter is immutable; a reload builds a new one, which takes over the
// pool when clamd's addresses and connection settings did not change.
type Filter struct {
	opts Options
	pool *shared.Ref[*clamd.Pool]
}

// New builds the filter. SharedPool, when set, is the pool held with a
// predecessor, and Pool is ignored.
func New(opts Options) *Filter {
	if opts.Reply == "" {
		opts.Reply = "VIRUS FOUND: %v"
	}
	f := &Filter{opts: opts, pool: opts.SharedPool}
	if f.pool == nil {
		f.pool = shared.New(opts.Pool, "", (*clamd.Pool).Close)
	}
	f.opts.Pool = f.pool.Value()
	return f
}

// Close lets go of the pool; its last holder closes the idle sessions to
// clamd.
func (f *Filter) Close() error { return f.pool.Release() }

func (f *Filter) Name() string { return Name }

// Summary is what the start-up and reload log lines say of the filter.
func (f *Filter) Summary() string {
	var a []string
	for _, s := range f.opts.Pool.Addresses() {
		a = append(a, s.String())
	}
	return fmt.Sprintf("clamd at %s, messages up to %d bytes", strings.Join(a, ", "), f.opts.MaxSize)
}

// Stages: the whole message as delivered; the verdict at its end.
func (f *Filter) Stages() (reads, decides pipeline.Stage) {
	return pipeline.StageHeader | pipeline.StageEndOfHeaders | pipeline.StageBody | pipeline.StageEndOfMessage, pipeline.StageEndOfMessage
}

// Modifies: the X-Virus-* headers.
func (f *Filter) Modifies() pipeline.Modification {
	switch f.opts.Headers {
	case HeadersAdd:
		return pipeline.ModAddHeader
	case HeadersReplace:
		return pipeline.ModAddHeader | pipeline.ModChangeHeader
	}
	return 0
}

func (f *Filter) NewCheck(_ context.Context, env *pipeline.Envelope) (pipeline.Check, error) {
	c := &check{f: f, env: env}
	// The client announced a size over the limit: no need to connect.
	if n, _ := mailfrom.DeclaredSize(env.FromArgs); n > f.opts.MaxSize {
		c.size, c.oversize = n, true
	}
	return c, nil
}

// Header names the filter adds, and the prefix of those it replaces.
const (
	scannedHeader = "X-Virus-Scanned"
	statusHeader  = "X-Virus-Status"
	virusPrefix   = "X-Virus-"
)

type check struct {
	pipeline.NopCheck
	f        *Filter
	env      *pipeline.Envelope
	header   []byte // the header section, until the stream opens
	stream   *clamd.Stream
	size     int64 // bytes of the message so far (or as SIZE= announced)
	oversize bool
	started  bool // the stream was opened: the header went, no second one
	// theirs counts the X-Virus-* fields the message came with, by name
	// (the MTA matches names without regard to case), in order of first
	// appearance; removed says their deletions are asked for.
	theirs  map[string]*theirField
	order   []*theirField
	removed bool
}

type theirField struct {
	name  string // as first seen
	count int
}

func (c *check) Header(_ context.Context, name, value string) (verdict.Verdict, error) {
	if c.f.opts.Headers == HeadersReplace && len(name) >= len(virusPrefix) && strings.EqualFold(name[:len(virusPrefix)], virusPrefix) {
		c.countTheirs(name)
	}
	if !c.oversize && !c.started { // a field after the header went cannot be streamed in place
		before := len(c.header)
		c.header = message.AppendField(c.header, name, value)
		c.grow(len(c.header) - before)
	}
	return verdict.Pass, nil
}

// grow counts n more bytes of message and reports whether it still fits
// MaxSize; past it the stream is dropped.
func (c *check) grow(n int) bool {
	c.size += int64(n)
	if !c.oversize && c.size > c.f.opts.MaxSize {
		c.oversize = true
		c.header = nil
		c.closeStream()
	}
	return !c.oversize
}

func (c *check) countTheirs(name string) {
	key := strings.ToLower(name)
	f := c.theirs[key]
	if f == nil {
		if c.theirs == nil {
			c.theirs = map[string]*theirField{}
		}
		f = &theirField{name: name}
		c.theirs[key] = f
		c.order = append(c.order, f)
	}
	f.count++
}

// removeTheirs asks, once the header is known, for the deletion of every
// X-Virus-* field the message came with, last first so the indexes hold.
// Asked before the scan, so a message delivered whatever becomes of it
// (monitor mode, too large, clamd failing with on_error = "accept")
// keeps no status of another's making.
func (c *check) removeTheirs(env *pipeline.Envelope) {
	if c.removed {
		return
	}
	c.removed = true
	for _, f := range c.order {
		for i := f.count; i >= 1; i-- {
			env.ChangeHeader(f.name, i, "")
		}
	}
	c.theirs, c.order = nil, nil
}

func (c *check) EndOfHeaders(ctx context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	c.removeTheirs(env)
	if c.oversize || c.started { // a repeated end of headers: the header went already
		return verdict.Pass, nil
	}
	c.header = append(c.header, "\r\n"...)
	if !c.grow(2) {
		return verdict.Pass, nil
	}
	return verdict.Pass, c.open(ctx)
}

// open starts the message's stream, once: the check never holds two, so
// its Close gives back the one connection slot it took.
func (c *check) open(ctx context.Context) error {
	if c.started {
		if c.stream == nil {
			return errStreamEnded
		}
		return nil
	}
	c.started = true
	st, err := c.f.opts.Pool.Open(ctx)
	if err != nil {
		return err
	}
	c.stream = st
	err = st.Write(ctx, c.header)
	c.header = nil
	return c.streamErr(err)
}

// errStreamEnded is a stage after the message's stream failed or ended.
var errStreamEnded = errors.New("clamav: the message's stream to clamd ended already")

// streamErr turns clamd's refusal of a long stream into oversize.
func (c *check) streamErr(err error) error {
	if errors.Is(err, clamd.ErrSizeLimit) {
		c.clamdLimit()
		return nil
	}
	return err
}

// clamdLimit: clamd refused the stream before our max_size did.
func (c *check) clamdLimit() {
	c.oversize = true
	c.f.opts.Log.Warn("clamav: clamd refused a message as longer than its StreamMaxLength; lower max_size to at most clamd's StreamMaxLength",
		"max_size", c.f.opts.MaxSize, "sent", c.stream.Sent(), "clamd", c.stream.Server().String(), "queue_id", c.env.QueueID)
	c.closeStream()
}

func (c *check) Body(ctx context.Context, chunk []byte) (verdict.Verdict, error) {
	if !c.grow(len(chunk)) {
		return verdict.Pass, nil
	}
	if c.stream == nil { // the MTA sent no header stage
		if err := c.open(ctx); err != nil {
			return verdict.Pass, err
		}
		if c.oversize {
			return verdict.Pass, nil
		}
	}
	return verdict.Pass, c.streamErr(c.stream.Write(ctx, chunk))
}

func (c *check) EndOfMessage(ctx context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	c.removeTheirs(env) // the MTA sent no end-of-header stage
	if !c.oversize && c.stream == nil {
		if err := c.open(ctx); err != nil { // an empty message
			return verdict.Pass, err
		}
	}
	if c.oversize {
		return c.tooLarge(env), nil
	}
	res, err := c.stream.Result(ctx)
	c.closeStream()
	if errors.Is(err, clamd.ErrSizeLimit) {
		c.oversize = true
		return c.tooLarge(env), nil
	}
	if err != nil {
		return verdict.Pass, err
	}
	if res.Virus != "" {
		v := verdict.Rejectf(verdict.CodeMailboxUnavailable, verdict.EnhSecurity, "%s", strings.ReplaceAll(c.f.opts.Reply, "%v", res.Virus))
		v.Reason = res.Virus
		c.status(env, "Infected ("+res.Virus+")") // seen when the filter only monitors
		return v, nil
	}
	c.status(env, "Clean")
	return verdict.Pass, nil
}

// tooLarge applies on_oversize.
func (c *check) tooLarge(env *pipeline.Envelope) verdict.Verdict {
	var v verdict.Verdict
	switch c.f.opts.Oversize {
	case OversizeTempFail:
		v = verdict.TempFailf(verdict.CodeLocalError, verdict.EnhSystemTemp, "Message too large to scan, try again later")
	case OversizeReject:
		v = verdict.Rejectf(verdict.CodeExceededStorage, verdict.EnhMessageTooBig, "Message too large to scan")
	default:
		c.f.opts.Log.Info("clamav: message not scanned: larger than max_size; accepted (on_oversize = \"accept\")",
			"size", c.size, "max_size", c.f.opts.MaxSize, "queue_id", env.QueueID, "from", pipeline.LogField(env.From))
		if c.f.opts.Stats != nil {
			c.f.opts.Stats.Hit(Name, "not scanned: too large")
		}
		c.status(env, "Unscanned (too large)")
		return verdict.Pass
	}
	v.Reason, v.Key = fmt.Sprintf("message of %d bytes over max_size %d", c.size, c.f.opts.MaxSize), "too large to scan"
	c.status(env, "Unscanned (too large)") // seen when the filter only monitors
	return v
}

// status adds the X-Virus-* fields (the message's own were removed at
// the end of its header, when they are to be replaced).
func (c *check) status(env *pipeline.Envelope, status string) {
	if c.f.opts.Headers == HeadersNone {
		return
	}
	env.AddHeader(scannedHeader, "ClamAV using mailguard")
	env.AddHeader(statusHeader, status)
}

func (c *check) closeStream() {
	if c.stream != nil {
		c.stream.Close()
		c.stream = nil
	}
}

func (c *check) Close() { c.closeStream() }
