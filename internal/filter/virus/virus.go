// Package virus is the signature filter: it looks for known worm signatures
// (literal lines of their raw MIME text) anywhere in the message body as the
// MTA streams it, and refuses a message that carries one with
// "550 5.7.0 VIRUS FOUND" at the end of DATA, so no copy is ever accepted.
package virus

import (
	"context"
	"fmt"
	"sync"

	"mailguard/internal/matcher"
	"mailguard/internal/pipeline"
	"mailguard/internal/sigfile"
	"mailguard/internal/verdict"
)

// Name is the filter's configuration name.
const Name = "virus"

// Options configure the filter.
type Options struct {
	// Reply is the text the SMTP client sees; default "VIRUS FOUND".
	Reply string
	// IncludeName appends the signature name to the reply text.
	IncludeName bool
	// Source names the signature file in the start-up log line; "" is the
	// bundled examples.
	Source string
}

// Filter is immutable; a reload builds a new one.
type Filter struct {
	m        *matcher.Matcher
	count    int
	opts     Options
	scanners sync.Pool
}

// New builds the filter from parsed signatures.
func New(sigs []sigfile.Signature, opts Options) (*Filter, error) {
	m, err := matcher.New(sigfile.Patterns(sigs))
	if err != nil {
		return nil, err
	}
	if opts.Reply == "" {
		opts.Reply = "VIRUS FOUND"
	}
	f := &Filter{m: m, opts: opts, count: len(sigs)}
	f.scanners.New = func() any { return m.NewScanner() }
	return f, nil
}

func (f *Filter) Name() string { return Name }

// Summary is what the start-up and reload log lines say of the filter.
func (f *Filter) Summary() string {
	src := f.opts.Source
	if src == "" {
		src = "bundled examples"
	}
	return fmt.Sprintf("%d signatures from %s", f.count, src)
}

// Stages: the filter reads the body, and its verdict waits for the end of
// the message, so body chunks need no reply from us.
func (f *Filter) Stages() (reads, decides pipeline.Stage) {
	return pipeline.StageBody, pipeline.StageEndOfMessage
}

func (f *Filter) NewCheck(context.Context, *pipeline.Envelope) (pipeline.Check, error) {
	s := f.scanners.Get().(*matcher.Scanner)
	s.Reset()
	return &check{f: f, s: s}, nil
}

type check struct {
	pipeline.NopCheck
	f *Filter
	s *matcher.Scanner
}

func (c *check) Body(_ context.Context, chunk []byte) (verdict.Verdict, error) {
	if !c.s.Write(chunk) {
		return verdict.Pass, nil
	}
	name := c.f.m.Name(c.s.Hit())
	text := c.f.opts.Reply
	if c.f.opts.IncludeName {
		text = fmt.Sprintf("%s: %s", text, name)
	}
	v := verdict.Rejectf(verdict.CodeMailboxUnavailable, verdict.EnhSecurity, "%s", text)
	v.Reason = name
	return v, nil
}

func (c *check) Close() {
	if c.s != nil {
		c.f.scanners.Put(c.s)
		c.s = nil
	}
}
