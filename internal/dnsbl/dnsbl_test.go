package dnsbl

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

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
	for _, s := range []string{"zen.example.org", "zen.example.org=127.0.0.[2..11]*3", "x.y=127.0.0.[1;2..4]*-1", "a.b=[", "a.b*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if site, err := ParseSite(s); err == nil {
			site.counts(netip.MustParseAddr("127.0.0.2"))
		}
	})
}
