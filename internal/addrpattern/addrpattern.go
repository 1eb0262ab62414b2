// Package addrpattern is the one syntax of address patterns, wherever a
// configuration or a list names senders or recipients (quota exemptions,
// sender blocklists, capture selections):
//
//	local@domain       that address
//	@domain, *@domain  any address at that domain
//	*.domain           any address at a subdomain of domain (list @domain
//	                   too for the domain itself)
//	local@*            that local part at any domain
//	<>                 the null sender (bounces)
//
// Everything compares case-insensitively. A Set answers with a few map
// lookups, however many patterns it holds.
package addrpattern

import (
	"fmt"
	"strings"
)

// Forms is the syntax, for error messages.
const Forms = `an address, "@domain", "*@domain", "*.domain", "local@*" or "<>"`

// Set is a set of patterns.
type Set struct {
	addrs, domains, suffixes, locals map[string]bool
	null                             bool
	n                                int
}

// NewSet parses patterns. The set holds every good one; the error names
// the first bad one (a checked configuration has none: a caller may
// ignore it, and a bad pattern then selects nothing).
func NewSet(patterns []string) (*Set, error) {
	s := &Set{}
	var first error
	for _, p := range patterns {
		if err := s.Add(p); err != nil && first == nil {
			first = err
		}
	}
	return s, first
}

// Check says whether p is a pattern.
func Check(p string) error { return (&Set{}).Add(p) }

// Add adds one pattern.
func (s *Set) Add(p string) error {
	if s.addrs == nil {
		s.addrs, s.domains, s.suffixes, s.locals = map[string]bool{}, map[string]bool{}, map[string]bool{}, map[string]bool{}
	}
	q := strings.ToLower(strings.TrimSpace(p))
	bad := fmt.Errorf("pattern %q: want %s", p, Forms)
	switch {
	case q == "<>":
		s.null = true
	case strings.HasPrefix(q, "*.") && validDomain(q[2:]):
		s.suffixes[q[1:]] = true
	case strings.HasPrefix(q, "*@") && validDomain(q[2:]):
		s.domains[q[2:]] = true
	case strings.HasPrefix(q, "@") && validDomain(q[1:]):
		s.domains[q[1:]] = true
	case strings.HasSuffix(q, "@*") && validLocal(q[:len(q)-2]):
		s.locals[q[:len(q)-2]] = true
	default:
		a, ok := Normalize(q)
		if !ok {
			return bad
		}
		s.addrs[a] = true
	}
	s.n++
	return nil
}

// Len is the number of patterns added.
func (s *Set) Len() int { return s.n }

// Match reports whether an address (with or without <>; "" is the null
// sender) matches a pattern of the set.
func (s *Set) Match(addr string) bool {
	if s == nil {
		return false
	}
	a := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(addr, "<"), ">"))
	if a == "" {
		return s.null
	}
	at := strings.LastIndexByte(a, '@')
	if at < 0 {
		return false
	}
	return s.MatchNormalized(a, a[:at], a[at+1:])
}

// MatchNormalized is Match for an address already lower-cased and split,
// for callers that check one address against many sets.
func (s *Set) MatchNormalized(addr, local, domain string) bool {
	if s == nil {
		return false
	}
	if s.addrs[addr] || s.domains[domain] || s.locals[local] {
		return true
	}
	for i := 0; i < len(domain); i++ {
		if domain[i] == '.' && s.suffixes[domain[i:]] {
			return true
		}
	}
	return false
}

// Normalize lower-cases a plain address local@domain; false if it is not
// one.
func Normalize(s string) (string, bool) {
	s = strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(s, "<"), ">"))
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || len(s) > 320 || !validDomain(s[at+1:]) || !validLocal(s[:at]) {
		return "", false
	}
	return s, true
}

func validLocal(l string) bool {
	if l == "" || l == "*" {
		return false
	}
	for i := 0; i < len(l); i++ {
		if c := l[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

func validDomain(d string) bool {
	if d == "" || len(d) > 255 || d[0] == '.' || d[len(d)-1] == '.' || d == "*" {
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
