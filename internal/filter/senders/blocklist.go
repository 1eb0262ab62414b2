// Package senders is the per-user sender blocklist filter: users who opted
// in have mail from senders they listed refused with 550 5.7.1, at RCPT TO
// for the envelope sender, and at the end of the headers for the header
// From: address.
package senders

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"mailguard/internal/addrpattern"
	"mailguard/internal/linefile"
)

// Blocklist maps local recipients to the sender patterns they refuse.
// Patterns: a full address, "@domain" (that domain), "*.domain" (its
// subdomains). Everything compares case-insensitively.
type Blocklist struct {
	delimiter string
	rules     map[string]*addrpattern.Set
}

// Load reads a blocklist file; delimiter maps "user+detail" to "user".
func Load(path, delimiter string, maxSize int64) (*Blocklist, error) {
	b := &Blocklist{delimiter: delimiter, rules: map[string]*addrpattern.Set{}}
	return b.result(linefile.ReadFile(path, maxSize, b.addLine))
}

// Parse reads "RECIPIENT PATTERN" lines with "#" comments, reporting every
// problem with its line (each a *linefile.Error).
func Parse(name string, r io.Reader, delimiter string) (*Blocklist, error) {
	b := &Blocklist{delimiter: delimiter, rules: map[string]*addrpattern.Set{}}
	return b.result(linefile.Read(name, r, b.addLine))
}

func (b *Blocklist) result(err error) (*Blocklist, error) {
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (b *Blocklist) addLine(_ int, f []string) error {
	if len(f) != 2 {
		return errors.New("want RECIPIENT PATTERN")
	}
	rcpt, ok := addrpattern.Normalize(f[0])
	if !ok {
		return fmt.Errorf("recipient %q is not an address", f[0])
	}
	return b.add(rcpt, strings.ToLower(f[1]))
}

func (b *Blocklist) add(rcpt, pattern string) error {
	r := b.rules[rcpt]
	if r == nil {
		r = &addrpattern.Set{}
		b.rules[rcpt] = r
	}
	return r.Add(pattern)
}

// Size is the number of recipients with a list, and of patterns in all.
func (b *Blocklist) Size() (recipients, patterns int) {
	for _, s := range b.rules {
		patterns += s.Len()
	}
	return len(b.rules), patterns
}

// Opted reports whether the recipient has a list at all.
func (b *Blocklist) Opted(rcpt string) bool { return b.lookup(rcpt) != nil }

// Sender is a sender address normalised once, to be checked against many
// recipients' lists.
type Sender struct{ addr, local, domain string }

// NewSender normalises an address; false if it is not one (an empty
// sender, a bounce, never matches).
func NewSender(s string) (Sender, bool) {
	a, ok := addrpattern.Normalize(s)
	if !ok {
		return Sender{}, false
	}
	at := strings.LastIndexByte(a, '@')
	return Sender{addr: a, local: a[:at], domain: a[at+1:]}, true
}

// Blocks reports whether rcpt's list refuses sender.
func (b *Blocklist) Blocks(rcpt, sender string) bool {
	s, ok := NewSender(sender)
	return ok && b.lookup(rcpt).MatchNormalized(s.addr, s.local, s.domain)
}

func (b *Blocklist) lookup(rcpt string) *addrpattern.Set {
	a, ok := addrpattern.Normalize(rcpt)
	if !ok {
		return nil
	}
	if r := b.rules[a]; r != nil {
		return r
	}
	if b.delimiter == "" {
		return nil
	}
	at := strings.LastIndexByte(a, '@')
	if i := strings.Index(a[:at], b.delimiter); i > 0 {
		return b.rules[a[:i]+a[at:]]
	}
	return nil
}
