package access_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all"
	"mailguard/internal/filters/filterstest"
	"mailguard/internal/logging"
	"mailguard/internal/pipeline"
	"mailguard/internal/testserver"
	"mailguard/internal/verdict"
)

func build(t *testing.T, section string) *pipeline.Pipeline {
	p, _ := filterstest.Build(t, "", "filters = [\"access\"]\n[access]\n"+section, pipeline.Env{})
	return p
}

type macros map[string]string

func (m macros) Macro(name string) (string, bool) {
	v, ok := m[strings.Trim(name, "{}")]
	return v, ok
}

// session runs connect, HELO and MAIL and returns the first final
// verdict and the stage it came at.
func session(p *pipeline.Pipeline, addr, host, helo string, m macros) (verdict.Verdict, string) {
	c := &pipeline.Conn{Addr: addr, Hostname: host, Family: pipeline.FamilyInet, Macros: m}
	cn := p.Open(context.Background(), c)
	defer cn.Close()
	if v := cn.Connect(); v.Final() {
		return v, "connect"
	}
	c.Helo = helo
	if v := cn.Helo(); v.Final() {
		return v, "helo"
	}
	msg, v := cn.Begin(pipeline.AllStages, pipeline.AllModifications, "a@example.org", "")
	defer msg.Close()
	if v.Final() {
		return v, "mail"
	}
	if v := msg.Rcpt("b@example.com", ""); v.Final() {
		return v, "rcpt"
	}
	return verdict.Pass, ""
}

func TestRules(t *testing.T) {
	p := build(t, `allow = ["192.0.2.128/25", ".good.example", "helo:trusted.example"]
deny = ["192.0.2.0/24", "2001:db8:bad::/48", ".badhost.example", "helo:localhost"]
exempt_authenticated = false
`)
	cases := []struct {
		addr, host, helo string
		stage, rule      string // stage "" : passes
	}{
		{"192.0.2.7", "[192.0.2.7]", "x", "connect", "deny 192.0.2.0/24"},
		{"192.0.2.200", "[192.0.2.200]", "x", "", ""}, // allow wins
		{"2001:db8:bad::25", "[2001:db8:bad::25]", "x", "connect", "deny 2001:db8:bad::/48"},
		{"2001:db8:900d::25", "[2001:db8:900d::25]", "x", "", ""},
		{"203.0.113.5", "mx.badhost.example", "x", "connect", "deny .badhost.example"},
		{"192.0.2.7", "mx.good.example", "x", "", ""}, // an allow by name wins over a deny by address
		{"203.0.113.5", "[203.0.113.5]", "localhost", "helo", "deny helo:localhost"},
		{"192.0.2.9", "[192.0.2.9]", "trusted.example", "connect", "deny 192.0.2.0/24"}, // HELO comes after connect
		{"203.0.113.5", "[203.0.113.5]", "mail.example.net", "", ""},
	}
	for _, c := range cases {
		v, stage := session(p, c.addr, c.host, c.helo, nil)
		if stage != c.stage || (stage != "" && (v.Code != 550 || v.Enhanced != "5.7.1" || v.Key != c.rule)) {
			t.Errorf("%s %s %s: %v at %q (%s), want %q at %q", c.addr, c.host, c.helo, v, stage, v.Key, c.rule, c.stage)
		}
	}
}

// By default the decision waits for MAIL, where the MTA says whether the
// client logged in: an authenticated user is never refused.
func TestAuthenticatedExempt(t *testing.T) {
	p := build(t, `deny = ["127.0.0.0/8"]
exempt_daemons = ["submission"]
`)
	if v, stage := session(p, "127.0.0.1", "localhost", "x", nil); stage != "mail" || v.Code != 550 {
		t.Fatalf("a stranger: %v at %q", v, stage)
	}
	if v, stage := session(p, "127.0.0.1", "localhost", "x", macros{"auth_authen": "alice"}); stage != "" {
		t.Fatalf("an authenticated user: %v at %q", v, stage)
	}
	if v, stage := session(p, "127.0.0.1", "localhost", "x", macros{"daemon_name": "submission"}); stage != "" {
		t.Fatalf("the submission listener: %v at %q", v, stage)
	}
	p = build(t, "deny = [\"127.0.0.0/8\"]\ndecide_at = \"rcpt\"\ndeny_reply = \"close\"\n")
	if v, stage := session(p, "127.0.0.1", "localhost", "x", nil); stage != "rcpt" || v.Code != 421 || v.Enhanced != "4.7.0" {
		t.Fatalf("decide_at rcpt, close: %v at %q", v, stage)
	}
}

func TestDNSBL(t *testing.T) {
	d := testserver.StartDNS(t, "bl.test", map[string]string{"2.0.0.127": "127.0.0.2", "4.0.0.127": "127.0.0.4"})
	p := build(t, `dnsbl = ["bl.test=127.0.0.[2..3]"]
dns_server = "`+d.Server()+`"
exempt_authenticated = false
dnsbl_timeout = "500ms"
`)
	v, stage := session(p, "127.0.0.2", "[127.0.0.2]", "x", nil)
	if stage != "connect" || v.Code != 550 || !strings.Contains(v.Text, "blocked using bl.test") {
		t.Fatalf("listed: %v at %q", v, stage)
	}
	if v, stage := session(p, "127.0.0.1", "[127.0.0.1]", "x", nil); stage != "" {
		t.Fatalf("unlisted: %v at %q", v, stage)
	}
	if v, stage := session(p, "127.0.0.4", "[127.0.0.4]", "x", nil); stage != "" {
		t.Fatalf("an answer outside the pattern: %v at %q", v, stage)
	}
	// Decided at MAIL (the default), asked from connect on.
	pm := build(t, "dnsbl = [\"bl.test\"]\ndns_server = \""+d.Server()+"\"\n")
	if v, stage := session(pm, "127.0.0.2", "[127.0.0.2]", "x", nil); stage != "mail" || v.Code != 550 {
		t.Fatalf("listed, decided at MAIL: %v at %q", v, stage)
	}
	if v, stage := session(pm, "127.0.0.2", "[127.0.0.2]", "x", macros{"auth_authen": "alice"}); stage != "" {
		t.Fatalf("listed but logged in: %v at %q", v, stage)
	}
	// One list's weight under the threshold lists no one.
	p2 := build(t, "dnsbl = [\"bl.test\"]\ndnsbl_threshold = 2\ndns_server = \""+d.Server()+"\"\nexempt_authenticated = false\n")
	if v, stage := session(p2, "127.0.0.2", "[127.0.0.2]", "x", nil); stage != "" {
		t.Fatalf("under the threshold: %v at %q", v, stage)
	}
	// A DNS server that stops answering: on_error (accept), within the timeout.
	d.Pause()
	defer d.Resume()
	if v, stage := session(p, "127.0.0.5", "[127.0.0.5]", "x", nil); stage != "" {
		t.Fatalf("DNS down: %v at %q", v, stage)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := map[string]string{
		`deny = ["192.0.2.1/24"]`:  "access.deny: \"192.0.2.1/24\" has host bits set",
		`allow = ["not a rule"]`:   "access.allow:",
		`dnsbl = ["zen"]`:          "access.dnsbl:",
		`decide_at = "connect"`:    "exempt_authenticated needs",
		`dns_server = "127.0.0.1"`: "want HOST:PORT",
		"dnsbl_timeout = \"20s\"":  "less than timeout",
		`deny_reply = "drop"`:      "access.deny_reply",
	}
	for section, want := range cases {
		_, err := filters.Parse("t.toml", []byte("filters = [\"access\"]\n[access]\n"+section+"\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", section, err, want)
		}
	}
}

// BenchmarkRules is one client judged against 1,000 deny rules (none
// matching, the worst case) through the pipeline, decided at connect.
func BenchmarkRules(b *testing.B) {
	var deny []string
	for i := 0; i < 1000; i++ {
		deny = append(deny, fmt.Sprintf("\"10.%d.%d.0/24\"", i/256, i%256))
	}
	cfg, err := filters.Parse("b.toml", []byte("filters = [\"access\"]\n[access]\nexempt_authenticated = false\ndeny = ["+strings.Join(deny, ", ")+"]\n"))
	if err != nil {
		b.Fatal(err)
	}
	p, err := filters.Build(cfg, pipeline.Env{Log: logging.Discard()})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		cn := p.Open(context.Background(), &pipeline.Conn{Addr: "192.0.2.1", Hostname: "mx.example.org"})
		if v := cn.Connect(); v.Final() {
			b.Fatal(v)
		}
		cn.Close()
	}
}
