package dnsbl

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"mailguard/internal/testserver"
)

func TestParseSite(t *testing.T) {
	s, err := ParseSite("zen.example.org=127.0.0.[2..4;10]*3")
	if err != nil || s.Zone != "zen.example.org" || s.Weight != 3 {
		t.Fatalf("%+v %v", s, err)
	}
	for ans, want := range map[string]bool{"127.0.0.2": true, "127.0.0.4": true, "127.0.0.10": true, "127.0.0.5": false, "127.0.1.2": false, "10.0.0.2": false} {
		if got := s.counts(netip.MustParseAddr(ans)); got != want {
			t.Errorf("%s: %v", ans, got)
		}
	}
	plain, _ := ParseSite("bl.example.org")
	if !plain.counts(netip.MustParseAddr("127.0.0.9")) || plain.counts(netip.MustParseAddr("192.0.2.1")) {
		t.Error("a site without a pattern must count any 127.0.0.0/8 answer, and only those")
	}
	allow, _ := ParseSite("list.dnswl.example=127.0.[0..255].[1..3]*-5")
	if allow.Weight != -5 {
		t.Error(allow.Weight)
	}
	for _, bad := range []string{"nodots", "zen.example.org=127.0.0", "zen.example.org=127.0.0.[3..2]", "zen.example.org*x", "zen.example.org=127.0.0.[2"} {
		if _, err := ParseSite(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestQueryName(t *testing.T) {
	if got := QueryName(netip.MustParseAddr("192.0.2.99"), "zen.example.org"); got != "99.2.0.192.zen.example.org." {
		t.Error(got)
	}
	if got := QueryName(netip.MustParseAddr("2001:db8::1"), "bl.example"); !strings.HasPrefix(got, "1.0.0.0.0.0.0.0.") || !strings.HasSuffix(got, "8.b.d.0.1.0.0.2.bl.example.") {
		t.Error(got)
	}
}

// Against a real DNS server: listed, not listed, weights, cached answers,
// and a server that stops answering within the timeout.
func TestRealDNS(t *testing.T) {
	d := testserver.StartDNS(t, "bl.test", map[string]string{"2.0.0.127": "127.0.0.2", "3.0.0.127": "127.0.0.10", "5.0.0.127": "127.255.255.254"})
	now := time.Unix(1000, 0)
	r, err := NewResolver(Options{Server: d.Server(), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	sites := []Site{{Zone: "bl.test", Weight: 1}}
	only2, _ := ParseSite("bl.test=127.0.0.2*2")
	ctx := context.Background()
	if res := r.Check(ctx, netip.MustParseAddr("127.0.0.2"), sites); res.Score != 1 || len(res.Errs) != 0 {
		t.Fatalf("listed: %+v", res)
	}
	if res := r.Check(ctx, netip.MustParseAddr("127.0.0.1"), sites); res.Score != 0 || len(res.Errs) != 0 {
		t.Fatalf("not listed: %+v", res)
	}
	if res := r.Check(ctx, netip.MustParseAddr("127.0.0.3"), []Site{only2}); res.Score != 0 {
		t.Fatalf("an answer the pattern leaves out counted: %+v", res)
	}
	if res := r.Check(ctx, netip.MustParseAddr("127.0.0.5"), sites); res.Score != 0 || len(res.Errs) != 1 {
		t.Fatalf("a list's refusal code taken for a listing: %+v", res)
	}
	// Cached: with the server hung, the same questions are answered.
	d.Pause()
	defer d.Resume()
	if res := r.Check(ctx, netip.MustParseAddr("127.0.0.2"), sites); res.Score != 1 || len(res.Errs) != 0 {
		t.Fatalf("cached listing: %+v", res)
	}
	// Past the TTL (300 s), the server is asked again, and does not answer.
	now = now.Add(301 * time.Second)
	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	res := r.Check(tctx, netip.MustParseAddr("127.0.0.2"), sites)
	if res.Score != 0 || len(res.Errs) != 1 {
		t.Fatalf("hung server: %+v", res)
	}
}

func FuzzParseSite(f *testing.F) {
	for _, s := range []string{"zen.example.org", "zen.example.org=127.0.0.[2..11]*3", "x.y=127.0.0.[1;2..4]*-1", "a.b=[", "a.b*", "zen.example.org..", ".example.org"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		last := byte(len(s)) // an answer's last octet, as good as any
		site, err := ParseSite(s)
		if err != nil {
			return
		}
		if site.Zone != strings.ToLower(site.Zone) || strings.HasSuffix(site.Zone, ".") || !strings.Contains(site.Zone, ".") {
			t.Fatalf("%q: zone %q", s, site.Zone)
		}
		// Only answers in 127.0.0.0/8 count; with no pattern, every one.
		if site.counts(netip.AddrFrom4([4]byte{10, 0, 0, last})) {
			t.Fatalf("%q counts an answer outside 127.0.0.0/8", s)
		}
		if !strings.Contains(s, "=") && !site.counts(netip.AddrFrom4([4]byte{127, 0, 0, last})) {
			t.Fatalf("%q, no pattern, does not count 127.0.0.%d", s, last)
		}
	})
}

// heldServer is a DNS server (in addition to the real one above) that
// counts the queries it gets and answers each "listed" only when release
// is closed.
type heldServer struct {
	addr    string
	queries atomic.Int64
	release chan struct{}
}

func startHeldServer(t *testing.T) *heldServer {
	h := &heldServer{release: make(chan struct{})}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		h.queries.Add(1)
		<-h.release
		m := new(dns.Msg)
		m.SetReply(q)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(127, 0, 0, 2)})
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return h
}

// Lookups of one name at once send one query; a caller that gives up
// (its MTA hung up) ends neither the query nor the others' wait.
func TestConcurrentLookupsShareOneQuery(t *testing.T) {
	h := startHeldServer(t)
	r, err := NewResolver(Options{Server: h.addr})
	if err != nil {
		t.Fatal(err)
	}
	sites := []Site{{Zone: "bl.test", Weight: 1}}
	client := netip.MustParseAddr("192.0.2.10")
	quitter, quit := context.WithCancel(context.Background())
	results := make(chan Result, 20)
	go func() { results <- r.Check(quitter, client, sites) }()
	for h.queries.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	var wg sync.WaitGroup
	for range 19 {
		wg.Go(func() { results <- r.Check(context.Background(), client, sites) })
	}
	time.Sleep(100 * time.Millisecond) // let them all ask
	quit()
	if res := <-results; len(res.Errs) != 1 {
		t.Fatalf("the caller that gave up: %+v", res)
	}
	close(h.release)
	wg.Wait()
	for range 19 {
		if res := <-results; res.Score != 1 {
			t.Fatalf("a caller that waited: %+v", res)
		}
	}
	if n := h.queries.Load(); n != 1 {
		t.Fatalf("20 lookups of one name sent %d queries", n)
	}
}

// The cache holds at most CacheSize answers; when full, expired answers go
// first, and only then others.
func TestCacheBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	r, _ := NewResolver(Options{Server: "127.0.0.1:1", Now: func() time.Time { return now }, CacheSize: 100})
	for i := range 50 {
		r.store(fmt.Sprint("old", i), entry{expires: now.Add(time.Second)}, now)
	}
	for i := range 50 {
		r.store(fmt.Sprint("live", i), entry{expires: now.Add(time.Hour)}, now)
	}
	now = now.Add(time.Minute)
	r.store("new", entry{expires: now.Add(time.Hour)}, now)
	if len(r.cache) != 51 {
		t.Fatalf("%d answers kept, want the 50 live ones and the new one", len(r.cache))
	}
	for i := range 50 {
		if _, ok := r.cache[fmt.Sprint("live", i)]; !ok {
			t.Fatal("a live answer dropped while expired ones were there")
		}
	}
	for i := range 1000 {
		r.store(fmt.Sprint("flood", i), entry{expires: now.Add(time.Hour)}, now)
		if len(r.cache) > 100 {
			t.Fatalf("%d answers kept, over a bound of 100", len(r.cache))
		}
	}
	if _, ok := r.cache["flood999"]; !ok {
		t.Fatal("the newest answer not kept")
	}
}
