// Package outbreak is the outbreak filter: it notices a new worm before
// any signature exists. Every risky attachment (programs, scripts,
// archives, disk images, HTML, macro documents) is fingerprinted (its
// SHA-256, and a sketch of content-defined chunk hashes that survives the
// few bytes a worm varies per copy); the distinct client networks (/24,
// /64) and envelope senders each fingerprint came from are counted in a
// sliding window, in memory or in Redis shared by every MX host. Once a
// fingerprint has come from min_networks networks within the window, it
// is suspect: further copies get "451 4.7.1" for hold, the first
// max_samples copies (those before the threshold too) go to the samples
// Maildir for sigmine, and `mailguard outbreak list` and `release` show
// and let go of what is held.
package outbreak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/netip"
	"strings"

	"mailguard/internal/clientrule"
	"mailguard/internal/message"
	"mailguard/internal/mimewalk"
	"mailguard/internal/oneline"
	"mailguard/internal/pipeline"
	"mailguard/internal/shared"
	"mailguard/internal/stats"
	"mailguard/internal/verdict"
)

// Name is the filter's configuration name.
const Name = "outbreak"

// maxAttachments bounds the risky attachments of one message that are
// fingerprinted and counted: a message of a thousand zips costs no more
// than one of sixteen.
const maxAttachments = 16

// Options configure the filter.
type Options struct {
	Settings
	Store   Store
	Backend string // for the start-up line
	Reject  bool   // action "reject": 550 5.7.1 instead of 451 4.7.1
	Monitor bool   // for the wording of the log line
	Kinds   Kinds
	Exempt  clientrule.List
	Limits  mimewalk.Options
	samples *samples
	Log     *slog.Logger
	Stats   *stats.Counter
}

// Filter is immutable; its state (the store, the samples, the control
// socket) lives on across reloads with unchanged settings.
type Filter struct {
	opts    Options
	backend *shared.Ref[*backendState]
	ctl     *shared.Ref[*control] // nil for check-config and scan
}

func (f *Filter) Name() string { return Name }

// Summary is what the start-up and reload log lines say of the filter.
func (f *Filter) Summary() string {
	return fmt.Sprintf("held after %d networks within %s, for %s; counted in %s; samples in %s", f.opts.MinNetworks, f.opts.Window, f.opts.Hold, f.opts.Backend, f.opts.samples.dir)
}

// Stages: the client (connect), whether it logged in (MAIL), the message;
// the verdict at its end.
func (f *Filter) Stages() (reads, decides pipeline.Stage) {
	return pipeline.StageConnect | pipeline.StageMail | pipeline.StageHeader | pipeline.StageEndOfHeaders | pipeline.StageBody | pipeline.StageEndOfMessage, pipeline.StageEndOfMessage
}

// Macros: whether the client logged in.
func (f *Filter) Macros() map[pipeline.Stage][]string {
	return map[pipeline.Stage][]string{pipeline.StageMail: {"{auth_authen}"}}
}

// Close lets go of the filter's hold on its state; the last holder closes
// the store and the control socket.
func (f *Filter) Close() error {
	if f.ctl != nil {
		f.ctl.Value().closing(f)
	}
	err := f.backend.Release()
	if cerr := f.ctl.Release(); err == nil {
		err = cerr
	}
	return err
}

func (f *Filter) NewCheck(_ context.Context, env *pipeline.Envelope) (pipeline.Check, error) {
	c := &check{f: f, env: env}
	if env.Conn != nil {
		if _, ok := f.opts.Exempt.First(clientrule.NewClient(env.Conn.Addr, env.Conn.Hostname, "")); ok {
			c.skip = true
		}
	}
	return c, nil
}

type check struct {
	pipeline.NopCheck
	f      *Filter
	env    *pipeline.Envelope
	skip   bool // exempt, logged in, or no attachment possible
	header []byte
	// The message's own type is text, and it has a Content-Disposition.
	textBody, disposition bool
	// The walk, in a goroutine of its own: the MIME parser pulls, the
	// MTA pushes.
	pw      *io.PipeWriter
	pr      *io.PipeReader
	done    chan struct{}
	atts    []*Attachment
	walkErr error
	// The raw message, kept for the samples while within the budget.
	raw     *rawCopy
	keeping bool
}

func (c *check) MailFrom(_ context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	if env.Macro("{auth_authen}") != "" {
		c.skip = true
	}
	return verdict.Pass, nil
}

func (c *check) Header(_ context.Context, name, value string) (verdict.Verdict, error) {
	if !c.skip && c.done == nil {
		c.header = message.AppendField(c.header, name, value)
		switch {
		case strings.EqualFold(name, "Content-Type"):
			c.textBody = c.textBody || isText(value)
		case strings.EqualFold(name, "Content-Disposition"):
			c.disposition = true
		}
	}
	return verdict.Pass, nil
}

// isText: a message whose own type is text (a plain or HTML body, no
// parts) and that does not call itself a file carries no attachment.
func isText(contentType string) bool {
	t, _, err := mime.ParseMediaType(contentType)
	return err == nil && strings.HasPrefix(t, "text/")
}

func (c *check) EndOfHeaders(context.Context, *pipeline.Envelope) (verdict.Verdict, error) {
	c.start()
	return verdict.Pass, nil
}

func (c *check) Body(_ context.Context, chunk []byte) (verdict.Verdict, error) {
	c.start()
	c.write(chunk)
	return verdict.Pass, nil
}

func (c *check) start() {
	if c.done != nil {
		return
	}
	if c.textBody && !c.disposition {
		c.skip = true
	}
	if c.skip {
		return
	}
	header := append(c.header, "\r\n"...)
	c.header = nil
	c.keeping = c.f.opts.samples.max > 0
	c.pr, c.pw = io.Pipe()
	c.done = make(chan struct{})
	fp := &fingerprinter{}
	opts := c.f.opts.Limits
	opts.Content = func(p *mimewalk.Part) io.Writer {
		fp.reset(c.f.opts.Kinds, p)
		return fp
	}
	go func() {
		defer close(c.done)
		err := mimewalk.Walk(c.pr, opts, func(*mimewalk.Part) error {
			if a := fp.finish(); a != nil && len(c.atts) < maxAttachments {
				c.atts = append(c.atts, a)
			}
			return nil
		})
		c.walkErr = err
		c.pr.CloseWithError(errWalkDone)
	}()
	c.write(header)
}

var (
	errWalkDone  = errors.New("walk done")
	errAbandoned = errors.New("message abandoned")
)

func (c *check) write(b []byte) {
	if c.done == nil {
		return
	}
	if c.keeping {
		c.keep(b)
	}
	c.pw.Write(b) // an error: the walk ended (a limit); the rest is not needed
}

// keep appends to the raw copy, within the samples budget.
func (c *check) keep(b []byte) {
	s := c.f.opts.samples
	if c.raw == nil {
		c.raw = &rawCopy{}
	}
	if !s.grow(c.raw, b) {
		s.NotKept.Add(1)
		c.raw, c.keeping = nil, false
	}
}

// dropRaw gives back the raw copy's bytes.
func (c *check) dropRaw() {
	c.f.opts.samples.release(c.raw)
	c.raw, c.keeping = nil, false
}

func (c *check) Close() {
	if c.done != nil {
		c.pr.CloseWithError(errAbandoned)
		c.pw.CloseWithError(errAbandoned)
		<-c.done
	}
	c.dropRaw()
}

func (c *check) EndOfMessage(ctx context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	c.start()
	if c.done == nil { // skipped
		return verdict.Pass, nil
	}
	c.pw.Close()
	select {
	case <-c.done:
	case <-ctx.Done():
		c.pr.CloseWithError(ctx.Err())
		<-c.done
		return verdict.Pass, ctx.Err()
	}
	if c.walkErr != nil && c.f.opts.Stats != nil {
		var limit *mimewalk.LimitError
		if errors.As(c.walkErr, &limit) {
			c.f.opts.Stats.Hit(Name, "not all parts fingerprinted")
		}
	}
	if len(c.atts) == 0 {
		c.dropRaw()
		return verdict.Pass, nil
	}
	return c.f.judge(ctx, c, env)
}

// network is the client's /24 (IPv4) or /64 (IPv6), the unit a worm's
// spread is counted in: one infected host, or a site's few, is one.
func network(env *pipeline.Envelope) string {
	if env.Conn == nil {
		return "unknown"
	}
	a, err := netip.ParseAddr(strings.Trim(env.Conn.Addr, "[]"))
	if err != nil {
		return "local"
	}
	return clientrule.Network(a).String()
}

// standing is one attachment's, after its copy was counted.
type standing struct {
	a        *Attachment
	keys     []Key
	suspect  bool // it reached min_networks, or is held
	held     bool // hold this copy
	counted  bool // it reached min_networks in the window now
	id       Key  // the id a new record gets
	reached  []Key
	networks int64
	senders  int64
	record   string // the record's id
	created  bool
}

func (f *Filter) judge(ctx context.Context, c *check, env *pipeline.Envelope) (verdict.Verdict, error) {
	var all []Key
	stands := make([]standing, len(c.atts))
	for i, a := range c.atts {
		stands[i] = standing{a: a, keys: a.Keys()}
		all = append(all, stands[i].keys...)
	}
	sender := strings.ToLower(env.From)
	if sender == "" {
		sender = "<>"
	}
	states, err := f.opts.Store.Observe(ctx, all, network(env), sender)
	if err != nil {
		c.dropRaw()
		return verdict.Pass, err
	}
	multi := false
	at := 0
	var first, heldBy *standing
	for i := range stands {
		s := &stands[i]
		ks := states[at : at+len(s.keys)]
		at += len(s.keys)
		for _, st := range ks {
			multi = multi || st.Networks > 1
		}
		s.classify(ks, f.opts.MinNetworks)
		if !s.suspect {
			continue
		}
		sg := Sighting{ID: s.id, Keys: s.reached, Networks: s.networks, Senders: s.senders, Held: s.held, Refresh: s.counted,
			Name: s.a.Name, Kind: s.a.Kind, Size: s.a.Size}
		if s.record, s.created, err = f.opts.Store.Suspect(ctx, sg); err != nil {
			c.dropRaw()
			return verdict.Pass, err
		}
		if first == nil {
			first = s
		}
		if s.held && heldBy == nil {
			heldBy = s
		}
		if s.created {
			what := "further copies held"
			if f.opts.Monitor {
				what = "further copies would be held (monitor mode)"
			}
			f.opts.Log.Warn("outbreak: fingerprint suspect; "+what, "id", s.record, "networks", s.networks, "senders", s.senders,
				"attachment", pipeline.LogField(s.a.Name), "kind", s.a.Kind, "size", s.a.Size, "window", f.opts.Window.String(), "queue_id", env.QueueID)
			if f.opts.Stats != nil {
				f.opts.Stats.Hit(Name, "suspect")
			}
		}
	}
	if first == nil {
		if c.raw != nil {
			f.opts.samples.keep(c.raw, all, multi)
			c.raw = nil
		}
		return verdict.Pass, nil
	}
	raw := c.raw
	c.raw, c.keeping = nil, false
	f.opts.samples.suspect(first.record, first.reached, raw, f.sampleHeader(first, env), first.created)
	if heldBy == nil {
		return verdict.Pass, nil
	}
	var v verdict.Verdict
	if f.opts.Reject {
		v = verdict.Rejectf(verdict.CodeMailboxUnavailable, verdict.EnhDeliveryNotAuthorized, "Attachment held: a suspected outbreak")
	} else {
		v = verdict.TempFailf(verdict.CodeLocalError, verdict.EnhSecurityTemp, "Attachment held for an outbreak check, try again later")
	}
	s := heldBy
	v.Reason = fmt.Sprintf("attachment %q (%s, %d bytes) fingerprint %s: from %d networks, %d senders within %s", s.a.Name, s.a.Kind, s.a.Size, s.record, s.networks, s.senders, f.opts.Window)
	v.Key = "held"
	return v, nil
}

// classify weighs one attachment's key states. It is suspect when its
// SHA-256 reached min_networks or is held, or when sketchMatch of its
// sketch values did (all of them when it has fewer). It is held when a
// hold was already on it: its SHA-256's, or one on a sketch value of a
// suspect sketch (a copy of a fingerprint already suspect: the copy that
// made it suspect passed, and so holds were set).
func (s *standing) classify(ks []KeyState, minNetworks int64) {
	sha, sketch := ks[0], ks[1:]
	need := min(sketchMatch, len(sketch))
	var held, reached, counted, released int
	var fuzzyID Key
	for i, st := range sketch {
		if st.Released {
			released++
			continue
		}
		byCount := st.Networks >= minNetworks
		if !st.Held && !byCount {
			continue
		}
		if st.Held {
			held++
		}
		if byCount {
			counted++
		}
		reached++
		k := s.keys[1+i]
		s.reached = append(s.reached, k)
		if reached == 1 || lessKey(k, fuzzyID) {
			fuzzyID = k
		}
		s.networks = max(s.networks, st.Networks)
		s.senders = max(s.senders, st.Senders)
	}
	fuzzyOn := need > 0
	if sha.Released || fuzzyOn && released >= need {
		s.reached = nil
		return
	}
	shaCounted := sha.Networks >= minNetworks
	fuzzySuspect := fuzzyOn && reached >= need
	s.suspect = sha.Held || shaCounted || fuzzySuspect
	if !s.suspect {
		s.reached = nil
		return
	}
	s.held = sha.Held || fuzzySuspect && held > 0
	s.counted = shaCounted || fuzzyOn && counted >= need
	s.networks = max(s.networks, sha.Networks)
	s.senders = max(s.senders, sha.Senders)
	if sha.Held || shaCounted {
		s.reached = append(s.reached, s.keys[0])
	}
	if fuzzySuspect {
		s.id = fuzzyID
	} else {
		s.id = s.keys[0]
	}
}

func lessKey(a, b Key) bool { return string(a[:]) < string(b[:]) }

// sampleHeader records where a sample came from, on lines of its own
// before the message (as the capture filter's copies do).
func (f *Filter) sampleHeader(s *standing, env *pipeline.Envelope) string {
	var b strings.Builder
	b.WriteString("X-Outbreak-Fingerprint: " + s.record + "\r\n")
	if env.Conn != nil {
		b.WriteString("X-Envelope-Client: " + oneline.Header(env.Conn.Hostname, 0) + " [" + oneline.Header(env.Conn.Addr, 0) + "]\r\n")
	}
	b.WriteString("X-Envelope-From: <" + oneline.Header(env.From, 0) + ">\r\n")
	if env.QueueID != "" {
		b.WriteString("X-Envelope-Queue-ID: " + oneline.Header(env.QueueID, 0) + "\r\n")
	}
	return b.String()
}
