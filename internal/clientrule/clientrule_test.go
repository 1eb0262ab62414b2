package clientrule

import (
	"net/netip"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	cases := []struct {
		rule             string
		addr, host, helo string
		want             bool
	}{
		{"192.0.2.0/24", "192.0.2.77", "", "", true},
		{"192.0.2.0/24", "192.0.3.1", "", "", false},
		{"192.0.2.5", "192.0.2.5", "", "", true},
		{"192.0.2.5", "192.0.2.6", "", "", false},
		{"192.0.2.0/24", "::ffff:192.0.2.9", "", "", true}, // v4-mapped
		{"2001:db8::/32", "2001:db8:1::25", "", "", true},
		{"2001:db8::/32", "2001:db9::1", "", "", false},
		{"2001:db8::/32", "192.0.2.1", "", "", false},
		{"0.0.0.0/0", "", "", "", false}, // a unix-socket client has no address
		{".badhost.example", "192.0.2.1", "mx1.BadHost.example.", "", true},
		{".badhost.example", "192.0.2.1", "badhost.example", "", true},
		{".badhost.example", "192.0.2.1", "notbadhost.example", "", false},
		{"mx.example.org", "192.0.2.1", "mx.example.org", "", true},
		{"mx.example.org", "192.0.2.1", "a.mx.example.org", "", false},
		{".example.org", "192.0.2.1", "unknown", "", false}, // Postfix's unverified name
		{"unknown", "192.0.2.1", "unknown", "", false},
		{".example.org", "192.0.2.1", "[192.0.2.1]", "", false},
		{"helo:localhost", "192.0.2.1", "", "LOCALHOST", true},
		{"helo:.example.org", "192.0.2.1", "mx.example.org", "", false}, // a HELO rule looks at HELO only
		{"helo:.example.org", "192.0.2.1", "", "mail.example.org", true},
	}
	for _, c := range cases {
		r, err := Parse(c.rule)
		if err != nil {
			t.Fatalf("%s: %v", c.rule, err)
		}
		if got := r.Match(NewClient(c.addr, c.host, c.helo)); got != c.want {
			t.Errorf("%s vs %s %s %s: %v", c.rule, c.addr, c.host, c.helo, got)
		}
	}
}

func TestOrder(t *testing.T) {
	l, errs := ParseList([]string{"192.0.2.0/24", "192.0.2.128/25", ".example.org"})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	r, ok := l.First(NewClient("192.0.2.200", "a.example.org", ""))
	if !ok || r.Text != "192.0.2.0/24" {
		t.Fatalf("first match: %v %v", r.Text, ok)
	}
}

func TestBadRules(t *testing.T) {
	for rule, want := range map[string]string{
		"192.0.2.0/33": "not a network",
		"192.0.2.1/24": "host bits set; the network is 192.0.2.0/24",
		"bad host!":    "is not an address",
		"helo:":        "is not an address",
		"..example":    "is not an address",
		"":             "is not an address",
	} {
		if _, err := Parse(rule); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v", rule, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"192.0.2.0/24", "::1", ".example.org", "helo:x", "a..b", "1.2.3.4/0"} {
		f.Add(s, "192.0.2.1", "mx.example.org", "helo")
	}
	f.Fuzz(func(t *testing.T, rule, addr, host, helo string) {
		if r, err := Parse(rule); err == nil {
			r.Match(NewClient(addr, host, helo))
		}
	})
}

func TestNetwork(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.77":          "192.0.2.0/24",
		"::ffff:192.0.2.77":   "192.0.2.0/24", // a mapped IPv4 client is an IPv4 client
		"2001:db8:1:2:3::4":   "2001:db8:1:2::/64",
		"2001:db8:1:3:ffff::": "2001:db8:1:3::/64",
	} {
		if got := Network(netip.MustParseAddr(in)).String(); got != want {
			t.Errorf("Network(%s) = %s, want %s", in, got, want)
		}
	}
}
