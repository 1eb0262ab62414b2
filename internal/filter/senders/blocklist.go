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

	"mailguard/internal/linefile"
)

// Blocklist maps local recipients to the sender patterns they refuse.
// Patterns: a full address, "@domain" (that domain), "*.domain" (its
// subdomains). Everything compares case-insensitively.
type Blocklist struct {
	delimiter string
	rules     map[string]*rules
}

type rules struct {
	addrs, domains map[string]bool
	suffixes       map[string]bool // ".domain" for "*.domain"
}

// Load reads a blocklist file; delimiter maps "user+detail" to "user".
func Load(path, delimiter string, maxSize int64) (*Blocklist, error) {
	b := &Blocklist{delimiter: delimiter, rules: map[string]*rules{}}
	return b.result(linefile.ReadFile(path, maxSize, b.addLine))
}

// Parse reads "RECIPIENT PATTERN" lines with "#" comments, reporting every
// problem with its line (each a *linefile.Error).
func Parse(name string, r io.Reader, delimiter string) (*Blocklist, error) {
	b := &Blocklist{delimiter: delimiter, rules: map[string]*rules{}}
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
	rcpt, ok := address(f[0])
	if !ok {
		return fmt.Errorf("recipient %q is not an address", f[0])
	}
	return b.add(rcpt, strings.ToLower(f[1]))
}

func (b *Blocklist) add(rcpt, pattern string) error {
	r := b.rules[rcpt]
	if r == nil {
		r = &rules{addrs: map[string]bool{}, domains: map[string]bool{}, suffixes: map[string]bool{}}
		b.rules[rcpt] = r
	}
	switch {
	case strings.HasPrefix(pattern, "*.") && validDomain(pattern[2:]):
		r.suffixes[pattern[1:]] = true
	case strings.HasPrefix(pattern, "@") && validDomain(pattern[1:]):
		r.domains[pattern[1:]] = true
	default:
		a, ok := address(pattern)
		if !ok {
			return fmt.Errorf("pattern %q: want an address, @domain or *.domain", pattern)
		}
		r.addrs[a] = true
	}
	return nil
}

// address lower-cases a plain address local@domain; false if it is not one.
func address(s string) (string, bool) {
	s = strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(s, "<"), ">"))
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || len(s) > 320 || !validDomain(s[at+1:]) {
		return "", false
	}
	for i := 0; i < at; i++ {
		if c := s[i]; c <= ' ' || c == 0x7f {
			return "", false
		}
	}
	return s, true
}

func validDomain(d string) bool {
	if d == "" || len(d) > 255 || d[0] == '.' || d[len(d)-1] == '.' {
		return false
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '[' || c == ']' || c == ':' || c >= 0x80) {
			return false
		}
	}
	return true
}

// Opted reports whether the recipient has a list at all.
func (b *Blocklist) Opted(rcpt string) bool { return b.lookup(rcpt) != nil }

// Sender is a sender address normalised once, to be checked against many
// recipients' lists.
type Sender struct{ addr, domain string }

// NewSender normalises an address; false if it is not one (an empty
// sender, a bounce, never matches).
func NewSender(s string) (Sender, bool) {
	a, ok := address(s)
	if !ok {
		return Sender{}, false
	}
	return Sender{addr: a, domain: a[strings.LastIndexByte(a, '@')+1:]}, true
}

// Blocks reports whether rcpt's list refuses sender.
func (b *Blocklist) Blocks(rcpt, sender string) bool {
	s, ok := NewSender(sender)
	return ok && b.lookup(rcpt).blocks(s)
}

// blocks costs a few map lookups, however long the list: the address,
// the domain, and each parent domain for the "*.domain" patterns.
func (r *rules) blocks(s Sender) bool {
	if r == nil {
		return false
	}
	if r.addrs[s.addr] || r.domains[s.domain] {
		return true
	}
	for i := 0; i < len(s.domain); i++ {
		if s.domain[i] == '.' && r.suffixes[s.domain[i:]] {
			return true
		}
	}
	return false
}

func (b *Blocklist) lookup(rcpt string) *rules {
	a, ok := address(rcpt)
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
