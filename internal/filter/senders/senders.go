package senders

import (
	"context"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"slices"
	"strings"

	"mailguard/internal/addrpattern"
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

// Summary is what the start-up and reload log lines say of the filter.
func (f *Filter) Summary() string {
	r, p := f.opts.List.Size()
	return fmt.Sprintf("%d recipients' lists, %d patterns", r, p)
}

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

// maxFromAddresses bounds the header From: addresses checked: a message
// has one author, rarely a few; hundreds are an attack on the CPU.
const maxFromAddresses = 32

func (c *check) EndOfHeaders(_ context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	if len(env.Rcpts) == 0 {
		return verdict.Pass, nil
	}
	// Each address is parsed and normalised once; each recipient's list
	// is looked up once: the cost is recipients x (at most 32) map
	// lookups.
	var senders []Sender
	seen := map[Sender]bool{}
	for _, v := range c.from {
		for _, a := range FromAddresses(v) {
			if s, ok := NewSender(a); ok && !seen[s] && len(senders) < maxFromAddresses {
				seen[s] = true
				senders = append(senders, s)
			}
		}
	}
	if len(senders) == 0 {
		return verdict.Pass, nil
	}
	var blocking []string
	for _, r := range env.Rcpts {
		list := c.f.opts.List.lookup(r)
		if list == nil {
			continue
		}
		for _, s := range senders {
			if list.MatchNormalized(s.addr, s.local, s.domain) {
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
// value that does not parse gives the addresses a mail client would still
// show of it (see displayedAddresses): a stray bracket or an unclosed
// comment must not take a message past a blocklist. It never errors the
// message.
func FromAddresses(value string) []string {
	if len(value) > 16<<10 {
		return nil
	}
	if strings.Count(value, "@") > maxFromAddresses {
		// More addresses than are ever checked: parse only the first ones'
		// worth, at a comma, rather than the whole list.
		value = firstAddresses(value, maxFromAddresses)
	}
	// Unfold (RFC 5322 §2.2.3): a line break before a blank is no break.
	value = strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(value)
	p := mail.AddressParser{WordDecoder: decoder}
	list, err := p.ParseList(strings.TrimSpace(value))
	if err != nil {
		return displayedAddresses(value)
	}
	out := make([]string, 0, len(list))
	for _, a := range list {
		if a.Address == "" {
			continue
		}
		out = append(out, a.Address)
		// A local part that holds an address (quoted, or in an encoded
		// word) shows that address: Postfix makes one of a From: it cannot
		// parse, "Pest <news@pest.example>"@its.own.domain.
		if local := a.Address[:strings.LastIndexByte(a.Address, '@')]; strings.Contains(local, "@") || strings.Contains(local, "=?") {
			out = append(out, displayedAddresses(local)...)
		}
	}
	return out
}

// notInAddress are the bytes that end a word of displayedAddresses: those
// no plain address holds but that a header puts around one.
const notInAddress = "<>()\",;:[]\x7f"

// displayedAddresses is what a mail client shows of a From: that does not
// parse: its encoded words decoded, and every word (split at blanks,
// control characters, brackets, parentheses, quotes, commas, semicolons
// and colons) that is a plain address local@domain, once each, at most
// maxFromAddresses. Such a header is checked by every address it shows,
// the display name's too: a user who blocked an address sees it there.
func displayedAddresses(value string) []string {
	if decoded, err := decoder.DecodeHeader(value); err == nil {
		value = decoded
	}
	words := strings.FieldsFunc(value, func(r rune) bool {
		return r <= ' ' || strings.ContainsRune(notInAddress, r)
	})
	var out []string
	for _, w := range words {
		w = strings.TrimRight(w, ".")
		if !strings.Contains(w, "@") || len(out) == maxFromAddresses {
			continue
		}
		if a, ok := addrpattern.Normalize(w); ok && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// firstAddresses cuts a list of addresses after about n of them, at a
// comma (a cut inside a quoted name only loses the addresses after it).
func firstAddresses(value string, n int) string {
	at := 0
	for i := 0; i < len(value); i++ {
		switch value[i] {
		case '@':
			at++
		case ',':
			if at >= n {
				return value[:i]
			}
		}
	}
	return value
}
