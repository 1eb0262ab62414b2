// Package clientrule matches SMTP clients against the rules postmasters
// write for them: an address or network (IPv4 and IPv6 CIDR), a verified
// host name (exact, or ".suffix" for the domain and every name under it),
// or a HELO name ("helo:NAME", "helo:.suffix").
package clientrule

import (
	"fmt"
	"net/netip"
	"strings"
)

// Rule is one parsed rule.
type Rule struct {
	Text   string
	prefix netip.Prefix // address rules
	name   string       // host or HELO rules, lower case, without the leading dot
	suffix bool         // ".suffix": the name and every name under it
	helo   bool
}

// Parse reads one rule.
func Parse(s string) (Rule, error) {
	r := Rule{Text: s}
	t := strings.TrimSpace(s)
	if rest, ok := strings.CutPrefix(strings.ToLower(t), "helo:"); ok {
		r.helo = true
		return r, r.setName(rest, s)
	}
	if strings.Contains(t, "/") {
		p, err := netip.ParsePrefix(t)
		if err != nil {
			return r, fmt.Errorf("%q is not a network such as 192.0.2.0/24 or 2001:db8::/32", s)
		}
		if p != p.Masked() {
			return r, fmt.Errorf("%q has host bits set; the network is %s", s, p.Masked())
		}
		r.prefix = p
		return r, nil
	}
	if a, err := netip.ParseAddr(t); err == nil {
		r.prefix = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		return r, nil
	}
	return r, r.setName(strings.ToLower(t), s)
}

func (r *Rule) setName(n, orig string) error {
	if strings.HasPrefix(n, ".") {
		r.suffix, n = true, n[1:]
	}
	n = strings.TrimSuffix(n, ".")
	if !validName(n) {
		return fmt.Errorf("%q is not an address, a network, a host name (\"mx.example.org\", \".example.org\") or helo:NAME", orig)
	}
	r.name = n
	return nil
}

func validName(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Client is what rules are matched against.
type Client struct {
	Addr netip.Addr // invalid when unknown (a unix socket)
	// Host is the verified host name, "" when the MTA has none (Postfix
	// passes "unknown" or "[addr]"; Client ignores both).
	Host string
	Helo string
}

// NewClient builds a Client from what the MTA passes.
func NewClient(addr, host, helo string) Client {
	c := Client{Helo: strings.TrimSuffix(strings.ToLower(helo), ".")}
	if a, err := netip.ParseAddr(strings.Trim(addr, "[]")); err == nil {
		c.Addr = a.Unmap()
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host != "" && host != "unknown" && !strings.HasPrefix(host, "[") {
		c.Host = host
	}
	return c
}

// Helo reports whether the rule is about the HELO name, which is known
// only from HELO on.
func (r Rule) Helo() bool { return r.helo }

// Match reports whether the rule matches the client.
func (r Rule) Match(c Client) bool {
	switch {
	case r.prefix.IsValid():
		return c.Addr.IsValid() && r.prefix.Contains(c.Addr)
	case r.helo:
		return nameMatch(r, c.Helo)
	default:
		return nameMatch(r, c.Host)
	}
}

func nameMatch(r Rule, n string) bool {
	if n == "" {
		return false
	}
	if n == r.name {
		return true
	}
	return r.suffix && strings.HasSuffix(n, "."+r.name)
}

// List is rules in order.
type List []Rule

// ParseList reads rules; the error names every bad one.
func ParseList(rules []string) (List, []error) {
	var (
		out  List
		errs []error
	)
	for _, s := range rules {
		r, err := Parse(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, r)
	}
	return out, errs
}

// First returns the first rule that matches, if any.
func (l List) First(c Client) (Rule, bool) {
	for _, r := range l {
		if r.Match(c) {
			return r, true
		}
	}
	return Rule{}, false
}

// HasHelo reports whether any rule is about the HELO name.
func (l List) HasHelo() bool {
	for _, r := range l {
		if r.helo {
			return true
		}
	}
	return false
}

// Network is the network a client is counted by when one host is not the
// unit: its /24 for IPv4, its /64 for IPv6 (one site's or one customer's
// usual allocation), so a client cannot escape a per-network count by
// hopping addresses within it.
func Network(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := 24
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}
