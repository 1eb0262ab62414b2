// Package senders is the per-user sender blocklist filter: users who opted
// in have mail from senders they listed refused with 550 5.7.1, at RCPT TO
// for the envelope sender, and at the end of the headers for the header
// From: address.
package senders

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
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
	suffixes       []string // ".domain" for "*.domain"
}

// Error is one problem in a blocklist file.
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// Load reads a blocklist file; delimiter maps "user+detail" to "user".
func Load(path, delimiter string) (*Blocklist, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(path, f, delimiter)
}

// Parse reads "RECIPIENT PATTERN" lines with "#" comments, reporting every
// problem with its line.
func Parse(name string, r io.Reader, delimiter string) (*Blocklist, error) {
	b := &Blocklist{delimiter: delimiter, rules: map[string]*rules{}}
	var errs []error
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		f := strings.Fields(text)
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 {
			errs = append(errs, &Error{name, line, "want RECIPIENT PATTERN"})
			continue
		}
		rcpt, ok := address(f[0])
		if !ok {
			errs = append(errs, &Error{name, line, fmt.Sprintf("recipient %q is not an address", f[0])})
			continue
		}
		if err := b.add(rcpt, strings.ToLower(f[1])); err != nil {
			errs = append(errs, &Error{name, line, err.Error()})
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, &Error{name, line + 1, err.Error()})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return b, nil
}

func (b *Blocklist) add(rcpt, pattern string) error {
	r := b.rules[rcpt]
	if r == nil {
		r = &rules{addrs: map[string]bool{}, domains: map[string]bool{}}
		b.rules[rcpt] = r
	}
	switch {
	case strings.HasPrefix(pattern, "*.") && validDomain(pattern[2:]):
		r.suffixes = append(r.suffixes, pattern[1:])
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

// Blocks reports whether rcpt's list refuses sender. An empty sender (a
// bounce) or anything that is not an address never matches.
func (b *Blocklist) Blocks(rcpt, sender string) bool {
	r := b.lookup(rcpt)
	if r == nil {
		return false
	}
	s, ok := address(sender)
	if !ok {
		return false
	}
	if r.addrs[s] {
		return true
	}
	domain := s[strings.LastIndexByte(s, '@')+1:]
	if r.domains[domain] {
		return true
	}
	for _, suf := range r.suffixes {
		if strings.HasSuffix(domain, suf) {
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
