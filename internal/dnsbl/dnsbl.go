// Package dnsbl asks DNS blocklists (zen-style: the client's address,
// reversed, under the list's zone) whether a client is listed, several
// lists in parallel, with a timeout, and caches the answers for as long as
// their TTLs say. Sites are written as Postfix's postscreen_dnsbl_sites
// are: "zone", "zone=127.0.0.[2..11]" (only those answers count), and
// "*weight" (negative for allowlists); a client is listed when the
// weights of the lists that list it add up to a threshold.
package dnsbl

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/singleflight"
)

// Site is one list.
type Site struct {
	Text   string
	Zone   string // without the trailing dot
	Weight int
	filter [4][]octetRange // nil: any answer in 127.0.0.0/8 counts
}

type octetRange struct{ lo, hi int }

// ParseSite reads "zone[=pattern][*weight]".
func ParseSite(s string) (Site, error) {
	site := Site{Text: s, Weight: 1}
	t := strings.TrimSpace(s)
	if i := strings.LastIndexByte(t, '*'); i >= 0 {
		w, err := strconv.Atoi(t[i+1:])
		if err != nil {
			return site, fmt.Errorf("%q: the weight after * must be a whole number", s)
		}
		site.Weight, t = w, t[:i]
	}
	zone, pattern, hasPattern := strings.Cut(t, "=")
	zone = strings.TrimSuffix(strings.ToLower(zone), ".")
	// Every label non-empty: "zen.example.org.." or ".." would make
	// every query name invalid, each lookup an error.
	if _, ok := dns.IsDomainName(zone); !ok || !strings.Contains(zone, ".") || strings.HasPrefix(zone, ".") || strings.HasSuffix(zone, ".") || strings.Contains(zone, "..") {
		return site, fmt.Errorf("%q: %q is not a DNS zone such as zen.example.org", s, zone)
	}
	site.Zone = zone
	if hasPattern {
		octets := splitOctets(pattern)
		if len(octets) != 4 {
			return site, fmt.Errorf("%q: the answer pattern must have four parts, such as 127.0.0.[2..11]", s)
		}
		for i, o := range octets {
			rs, err := parseOctet(o)
			if err != nil {
				return site, fmt.Errorf("%q: %v", s, err)
			}
			site.filter[i] = rs
		}
	}
	return site, nil
}

// splitOctets splits an answer pattern at the dots outside brackets
// ("127.0.0.[2..11]" has a ".." inside).
func splitOctets(p string) []string {
	var (
		out   []string
		depth int
		start int
	)
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '[':
			depth++
		case ']':
			depth--
		case '.':
			if depth == 0 {
				out = append(out, p[start:i])
				start = i + 1
			}
		}
	}
	return append(out, p[start:])
}

// parseOctet reads "2", "[2..11]" or "[2;4;6..8]".
func parseOctet(o string) ([]octetRange, error) {
	inner, bracketed := strings.CutPrefix(o, "[")
	if bracketed {
		var ok bool
		if inner, ok = strings.CutSuffix(inner, "]"); !ok {
			return nil, fmt.Errorf("%q: unclosed [", o)
		}
	}
	var out []octetRange
	for _, part := range strings.Split(inner, ";") {
		lo, hi, isRange := strings.Cut(part, "..")
		if !isRange {
			hi = lo
		}
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || a < 0 || b > 255 || a > b || (!bracketed && (isRange || len(out) > 0)) {
			return nil, fmt.Errorf("%q is not a number 0-255, [a..b] or [a;b;c]", o)
		}
		out = append(out, octetRange{a, b})
	}
	return out, nil
}

// counts reports whether an answer lists the client for this site.
func (s Site) counts(a netip.Addr) bool {
	b := a.As4()
	if b[0] != 127 {
		return false
	}
	if s.filter[0] == nil {
		return true // no pattern: any answer in 127.0.0.0/8
	}
	for i, rs := range s.filter {
		in := false
		for _, r := range rs {
			in = in || int(b[i]) >= r.lo && int(b[i]) <= r.hi
		}
		if !in {
			return false
		}
	}
	return true
}

// errorAnswer: 127.255.255.0/24 is how lists such as Spamhaus say a query
// was refused (an open resolver, over the free limit), not a listing.
func errorAnswer(a netip.Addr) bool {
	b := a.As4()
	return b[0] == 127 && b[1] == 255 && b[2] == 255
}

// QueryName is the name asked for a client under a zone.
func QueryName(addr netip.Addr, zone string) string {
	addr = addr.Unmap()
	var b strings.Builder
	if addr.Is4() {
		o := addr.As4()
		fmt.Fprintf(&b, "%d.%d.%d.%d.", o[3], o[2], o[1], o[0])
	} else {
		o := addr.As16()
		const hex = "0123456789abcdef"
		for i := 15; i >= 0; i-- {
			b.WriteByte(hex[o[i]&0xf])
			b.WriteByte('.')
			b.WriteByte(hex[o[i]>>4])
			b.WriteByte('.')
		}
	}
	b.WriteString(zone)
	b.WriteByte('.')
	return b.String()
}

// Hit is one list that lists the client.
type Hit struct {
	Zone   string
	Answer netip.Addr
	Weight int
}

// Result is what the lists said of one client.
type Result struct {
	Score int
	Hits  []Hit
	// Errs are the lists that could not be asked or answered badly.
	Errs []error
}

// Resolver asks lists through one DNS server, and caches.
type Resolver struct {
	server  string
	client  *dns.Client
	now     func() time.Time
	mu      sync.Mutex
	cache   map[string]entry
	maxSize int
	// asking joins the lookups of one name that is not cached: a burst
	// of connections from one client (or a hung server) sends one query.
	asking singleflight.Group
}

type entry struct {
	addrs   []netip.Addr // nil: not listed (NXDOMAIN or no A record)
	expires time.Time
}

// Options tune a Resolver.
type Options struct {
	// Server is the DNS server, "host:port"; "" is the first nameserver
	// of /etc/resolv.conf.
	Server string
	Now    func() time.Time
	// CacheSize bounds the answers kept (default 100,000).
	CacheSize int
}

// NewResolver returns a resolver.
func NewResolver(opts Options) (*Resolver, error) {
	server := opts.Server
	if server == "" {
		conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil || len(conf.Servers) == 0 {
			return nil, fmt.Errorf("no DNS server given and none in /etc/resolv.conf: %v", err)
		}
		server = net.JoinHostPort(conf.Servers[0], conf.Port)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.CacheSize <= 0 {
		opts.CacheSize = 100000
	}
	return &Resolver{server: server, client: &dns.Client{UDPSize: 1232}, now: opts.Now, cache: map[string]entry{}, maxSize: opts.CacheSize}, nil
}

// Server is the DNS server asked.
func (r *Resolver) Server() string { return r.server }

// Check asks every site about addr in parallel, within ctx.
func (r *Resolver) Check(ctx context.Context, addr netip.Addr, sites []Site) Result {
	type answer struct {
		site  Site
		addrs []netip.Addr
		err   error
	}
	answers := make(chan answer, len(sites))
	for _, s := range sites {
		go func() {
			a, err := r.lookup(ctx, QueryName(addr, s.Zone))
			answers <- answer{s, a, err}
		}()
	}
	var res Result
	for range sites {
		a := <-answers
		if a.err != nil {
			res.Errs = append(res.Errs, fmt.Errorf("%s: %w", a.site.Zone, a.err))
			continue
		}
		for _, ip := range a.addrs {
			if errorAnswer(ip) {
				res.Errs = append(res.Errs, fmt.Errorf("%s: answered %s, the list's code for a refused query", a.site.Zone, ip))
				break
			}
			if a.site.counts(ip) {
				res.Score += a.site.Weight
				res.Hits = append(res.Hits, Hit{Zone: a.site.Zone, Answer: ip, Weight: a.site.Weight})
				break
			}
		}
	}
	return res
}

// negativeTTL caps how long "not listed" is cached when the zone's SOA
// says nothing, and maxTTL how long anything is.
const (
	negativeTTL = 5 * time.Minute
	maxTTL      = time.Hour
)

func (r *Resolver) lookup(ctx context.Context, name string) ([]netip.Addr, error) {
	now := r.now()
	r.mu.Lock()
	e, ok := r.cache[name]
	r.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.addrs, nil
	}
	// The query is shared, so no one caller's end cancels it; it keeps
	// the first caller's deadline (the DNS client's own timeouts bound it
	// otherwise), and each caller waits for it only within its own ctx.
	ch := r.asking.DoChan(name, func() (any, error) {
		qctx := context.WithoutCancel(ctx)
		if dl, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			qctx, cancel = context.WithDeadline(qctx, dl)
			defer cancel()
		}
		return r.query(qctx, name, now)
	})
	select {
	case res := <-ch:
		addrs, _ := res.Val.([]netip.Addr)
		return addrs, res.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// query asks the server about name and caches the answer.
func (r *Resolver) query(ctx context.Context, name string, now time.Time) ([]netip.Addr, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.RecursionDesired = true
	in, _, err := r.client.ExchangeContext(ctx, m, r.server)
	if err != nil {
		return nil, err
	}
	var (
		addrs []netip.Addr
		ttl   = maxTTL
	)
	switch in.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		for _, rr := range in.Answer {
			if a, ok := rr.(*dns.A); ok {
				if ip, ok := netip.AddrFromSlice(a.A.To4()); ok {
					addrs = append(addrs, ip)
					ttl = min(ttl, time.Duration(a.Hdr.Ttl)*time.Second)
				}
			}
		}
		if len(addrs) == 0 {
			ttl = negativeTTL
			for _, rr := range in.Ns {
				if soa, ok := rr.(*dns.SOA); ok {
					ttl = min(maxTTL, time.Duration(min(soa.Minttl, soa.Hdr.Ttl))*time.Second)
				}
			}
		}
	default:
		return nil, fmt.Errorf("DNS server %s answered %s", r.server, dns.RcodeToString[in.Rcode])
	}
	if ttl > 0 {
		r.store(name, entry{addrs: addrs, expires: now.Add(ttl)}, now)
	}
	return addrs, nil
}

// store caches an answer, making room by dropping expired answers, then
// any, when full.
func (r *Resolver) store(name string, e entry, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= r.maxSize {
		for k, v := range r.cache {
			if !now.Before(v.expires) {
				delete(r.cache, k)
			}
		}
		for k := range r.cache {
			if len(r.cache) < r.maxSize*9/10 {
				break
			}
			delete(r.cache, k)
		}
	}
	r.cache[name] = e
}
