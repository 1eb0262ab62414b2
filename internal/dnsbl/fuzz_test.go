package dnsbl

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzAnswer gives the resolver whatever a DNS server answers (miekg/dns
// reads the packet; this checks what we make of it), for three lists at
// once. Whatever the bytes: no panic; the score is the sum of the hits'
// weights; each hit is an answer in 127.0.0.0/8 its list counts, at most
// one per list; an answer that does not unpack, or a server failure,
// lists no one; each list's hit is the first of the answer's A records
// it counts, unless a refused-query code comes first; and asking again
// (from the cache or not) gives the same result.
func FuzzAnswer(f *testing.F) {
	q := QueryName(netip.MustParseAddr("192.0.2.10"), "bl.test")
	msg := func(rcode int, rrs ...dns.RR) []byte {
		m := new(dns.Msg)
		m.SetQuestion(q, dns.TypeA)
		m.Response, m.Rcode = true, rcode
		for _, rr := range rrs {
			if _, ok := rr.(*dns.SOA); ok {
				m.Ns = append(m.Ns, rr)
			} else {
				m.Answer = append(m.Answer, rr)
			}
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	a := func(ip string, ttl uint32) dns.RR {
		return &dns.A{Hdr: dns.RR_Header{Name: q, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.ParseIP(ip)}
	}
	soa := &dns.SOA{Hdr: dns.RR_Header{Name: "bl.test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 900}, Ns: "ns.bl.test.", Mbox: "h.bl.test.", Minttl: 60}
	for _, b := range [][]byte{
		msg(dns.RcodeSuccess, a("127.0.0.2", 300)),
		msg(dns.RcodeNameError, soa),
		msg(dns.RcodeSuccess, a("127.255.255.254", 60)),
		msg(dns.RcodeServerFailure),
		msg(dns.RcodeRefused),
		msg(dns.RcodeSuccess, a("127.0.0.20", 60), a("127.0.0.3", 60), a("127.0.1.2", 60)),
		msg(dns.RcodeSuccess, &dns.CNAME{Hdr: dns.RR_Header{Name: q, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: "x.bl.test."}, a("127.0.0.4", 0)),
		msg(dns.RcodeSuccess, &dns.AAAA{Hdr: dns.RR_Header{Name: q, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 60}, AAAA: net.ParseIP("::1")}),
		msg(dns.RcodeSuccess, a("10.0.0.2", 60), &dns.TXT{Hdr: dns.RR_Header{Name: q, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{"listed"}}),
		{0, 0, 0x81},
	} {
		f.Add(b)
	}
	var sites []Site
	for _, s := range []string{"a.test", "b.test=127.0.0.[2..11]*2", "c.test=127.0.[0;1].2*-1"} {
		site, err := ParseSite(s)
		if err != nil {
			f.Fatal(err)
		}
		sites = append(sites, site)
	}
	var answer atomic.Pointer[[]byte]
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 2 {
				continue
			}
			reply := append([]byte(nil), *answer.Load()...)
			if len(reply) >= 2 {
				copy(reply, buf[:2]) // the query's id
			}
			pc.WriteTo(reply, from)
		}
	}()
	client := netip.MustParseAddr("192.0.2.10")
	f.Fuzz(func(t *testing.T, raw []byte) {
		answer.Store(&raw)
		r, err := NewResolver(Options{Server: pc.LocalAddr().String()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		res := r.Check(ctx, client, sites)
		check(t, res, sites)

		// What the answer should list, read here from the same bytes.
		var m dns.Msg
		if len(raw) < 2 || m.Unpack(append([]byte{0, 0}, raw[2:]...)) != nil ||
			(m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError) {
			if len(res.Hits) != 0 {
				t.Fatalf("an answer that does not unpack, or a failure, lists: %+v", res)
			}
		} else if len(res.Errs) == 0 {
			for _, s := range sites {
				want := netip.Addr{}
				for _, rr := range m.Answer {
					a, ok := rr.(*dns.A)
					if !ok {
						continue
					}
					ip, ok := netip.AddrFromSlice(a.A.To4())
					if !ok {
						continue
					}
					if errorAnswer(ip) {
						t.Fatalf("a refused-query code gave no error: %+v", res)
					}
					if s.counts(ip) {
						want = ip
						break
					}
				}
				got := netip.Addr{}
				for _, h := range res.Hits {
					if h.Zone == s.Zone {
						got = h.Answer
					}
				}
				if got != want {
					t.Fatalf("%s: hit %v, the answer says %v (%+v)", s.Zone, got, want, res)
				}
			}
		}
		again := r.Check(ctx, client, sites)
		check(t, again, sites)
		if len(res.Errs) == 0 && (again.Score != res.Score || len(again.Hits) != len(res.Hits) || len(again.Errs) != 0) {
			t.Fatalf("asked again: %+v, first %+v", again, res)
		}
	})
}

// check holds whatever the answers: the score adds up, each hit counts.
func check(t *testing.T, res Result, sites []Site) {
	t.Helper()
	score, seen := 0, map[string]bool{}
	for _, h := range res.Hits {
		var site *Site
		for i := range sites {
			if sites[i].Zone == h.Zone {
				site = &sites[i]
			}
		}
		if site == nil || seen[h.Zone] || !h.Answer.Is4() || h.Answer.As4()[0] != 127 || !site.counts(h.Answer) ||
			errorAnswer(h.Answer) || h.Weight != site.Weight {
			t.Fatalf("a hit that does not count: %+v in %+v", h, res)
		}
		seen[h.Zone] = true
		score += h.Weight
	}
	if score != res.Score || len(res.Hits)+len(res.Errs) > len(sites) {
		t.Fatalf("score %d from hits worth %d, %d hits and %d errors for %d lists", res.Score, score, len(res.Hits), len(res.Errs), len(sites))
	}
}
