package senders

import (
	"context"
	"io"
	"mime"
	"net/mail"
	"strings"

	"mailguard/internal/pipeline"
	"mailguard/internal/verdict"
)

// Name is the filter's configuration name.
const Name = "senders"

// Options configure the filter.
type Options struct {
	List *Blocklist
	// Reply is the text after "550 5.7.1"; default "Sender blocked by recipient".
	Reply string
}

// Filter is immutable; a reload builds a new one.
type Filter struct{ opts Options }

// New returns the filter.
func New(opts Options) *Filter {
	if opts.Reply == "" {
		opts.Reply = "Sender blocked by recipient"
	}
	return &Filter{opts: opts}
}

func (f *Filter) Name() string { return Name }

// Stages: the envelope sender is judged at RCPT, the header From: at the
// end of the headers; both verdicts must reach the MTA there.
func (f *Filter) Stages() (reads, decides pipeline.Stage) {
	return pipeline.StageMail | pipeline.StageHeader, pipeline.StageRcpt | pipeline.StageEndOfHeaders
}

// Modifies: recipients who block the header From: are taken off a message
// the others still get.
func (f *Filter) Modifies() pipeline.Modification { return pipeline.ModRemoveRcpt }

func (f *Filter) NewCheck(context.Context, *pipeline.Envelope) (pipeline.Check, error) {
	return &check{f: f}, nil
}

type check struct {
	pipeline.NopCheck
	f    *Filter
	from []string // header From: values
}

func (f *Filter) refuse(reason string) verdict.Verdict {
	v := verdict.Rejectf(verdict.CodeMailboxUnavailable, verdict.EnhDeliveryNotAuthorized, "%s", f.opts.Reply)
	v.Reason = reason
	return v
}

func (c *check) Rcpt(_ context.Context, env *pipeline.Envelope, rcpt, _ string) (verdict.Verdict, error) {
	if c.f.opts.List.Blocks(rcpt, env.From) {
		return c.f.refuse("envelope sender blocked"), nil
	}
	return verdict.Pass, nil
}

func (c *check) Header(_ context.Context, name, value string) (verdict.Verdict, error) {
	if strings.EqualFold(name, "From") && len(c.from) < 8 {
		c.from = append(c.from, value)
	}
	return verdict.Pass, nil
}

func (c *check) EndOfHeaders(_ context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	var addrs []string
	for _, v := range c.from {
		addrs = append(addrs, FromAddresses(v)...)
	}
	if len(addrs) == 0 || len(env.Rcpts) == 0 {
		return verdict.Pass, nil
	}
	var blocking []string
	for _, r := range env.Rcpts {
		for _, a := range addrs {
			if c.f.opts.List.Blocks(r, a) {
				blocking = append(blocking, r)
				break
			}
		}
	}
	switch {
	case len(blocking) == 0:
		return verdict.Pass, nil
	case len(blocking) == len(env.Rcpts):
		return c.f.refuse("header From: blocked by every recipient"), nil
	}
	for _, r := range blocking {
		env.RemoveRcpt(r, "header From: blocked")
	}
	return verdict.Pass, nil
}

// decoder accepts encoded words in any charset: only the address matters,
// and a display name in an unknown charset must not hide it.
var decoder = &mime.WordDecoder{CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil }}

// FromAddresses extracts the addresses of a From: header value (RFC 5322:
// display names, comments, encoded words, groups, several addresses). A
// value that does not parse gives none: it never matches and never errors
// the message.
func FromAddresses(value string) []string {
	if len(value) > 16<<10 {
		return nil
	}
	// Unfold (RFC 5322 §2.2.3): a line break before a blank is no break.
	value = strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(value)
	p := mail.AddressParser{WordDecoder: decoder}
	list, err := p.ParseList(strings.TrimSpace(value))
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(list))
	for _, a := range list {
		if a.Address != "" {
			out = append(out, a.Address)
		}
	}
	return out
}
