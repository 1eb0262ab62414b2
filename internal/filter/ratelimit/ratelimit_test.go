package ratelimit_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all"
	"mailguard/internal/filters/filterstest"
	"mailguard/internal/logging"
	"mailguard/internal/pipeline"
	"mailguard/internal/stats"
	"mailguard/internal/testserver"
	"mailguard/internal/verdict"
)

type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func build(t *testing.T, section string, clk *clock) (*pipeline.Pipeline, *stats.Counter) {
	env := pipeline.Env{Now: time.Now}
	if clk != nil {
		env.Now = clk.Now
	}
	return filterstest.Build(t, "", "filters = [\"ratelimit\"]\n[ratelimit]\n"+section, env)
}

func connect(p *pipeline.Pipeline, addr string) (*pipeline.Connection, verdict.Verdict) {
	cn := p.Open(context.Background(), &pipeline.Conn{Addr: addr, Hostname: "[" + addr + "]", Family: pipeline.FamilyInet})
	return cn, cn.Connect()
}

func TestConnectionRate(t *testing.T) {
	clk := &clock{time.Unix(6000, 0)}
	p, counter := build(t, `[[ratelimit.rule]]
name = "conn-per-client"
event = "connection"
key = "client"
limit = 3
window = "1m"
`, clk)
	for i := 0; i < 3; i++ {
		cn, v := connect(p, "192.0.2.1")
		cn.Close()
		if v.Final() {
			t.Fatalf("connection %d refused: %v", i+1, v)
		}
	}
	cn, v := connect(p, "192.0.2.1")
	cn.Close()
	if code, enh, _ := v.Reply(); code != 451 || enh != "4.7.1" || v.Key != "conn-per-client" {
		t.Fatalf("4th connection: %v", v)
	}
	if _, v := connect(p, "192.0.2.2"); v.Final() {
		t.Fatal("another client counted with the first")
	}
	clk.now = clk.now.Add(2 * time.Minute)
	if _, v := connect(p, "192.0.2.1"); v.Final() {
		t.Fatalf("still refused after the window: %v", v)
	}
	if n := counter.Take().Hits["ratelimit:conn-per-client"]; n != 1 {
		t.Fatalf("refusals counted %d", n)
	}
}

func TestRecipientsPerSenderAndExemptions(t *testing.T) {
	p, _ := build(t, `exempt = ["198.51.100.0/24"]
[[ratelimit.rule]]
event = "recipient"
key = "sender"
limit = 2
window = "1h"
action = "reject"
`, nil)
	send := func(addr string, auth bool) []verdict.Verdict {
		cn, _ := connect(p, addr)
		defer cn.Close()
		m, _ := cn.Begin(pipeline.AllStages, pipeline.AllModifications, "Bulk@example.org", "")
		defer m.Close()
		var out []verdict.Verdict
		for _, r := range []string{"a@x", "b@x", "c@x"} {
			out = append(out, m.Rcpt(r, ""))
		}
		return out
	}
	got := send("192.0.2.1", false)
	if got[0].Final() || got[1].Final() || got[2].Code != 550 || got[2].Enhanced != "5.7.1" {
		t.Fatalf("got %v", got)
	}
	if got := send("192.0.2.9", false); !got[0].Final() {
		t.Fatal("the sender's count is per sender, from any client")
	}
	if got := send("198.51.100.7", false); got[2].Final() {
		t.Fatal("an exempt client was limited")
	}
}

func TestConcurrency(t *testing.T) {
	p, _ := build(t, "[[ratelimit.rule]]\nevent = \"concurrency\"\nkey = \"client\"\nlimit = 2\n", nil)
	a, v1 := connect(p, "192.0.2.1")
	b, v2 := connect(p, "192.0.2.1")
	c, v3 := connect(p, "192.0.2.1")
	c.Close()
	if v1.Final() || v2.Final() || v3.Code != 451 {
		t.Fatalf("%v %v %v", v1, v2, v3)
	}
	if want := "192.0.2.1 over 2 sessions at once (2 counted)"; !strings.HasSuffix(v3.Reason, want) {
		t.Errorf("reason %q, want it to end %q", v3.Reason, want)
	}
	a.Close()
	d, v4 := connect(p, "192.0.2.1")
	if v4.Final() {
		t.Fatalf("after a close: %v", v4)
	}
	b.Close()
	d.Close()
}

// A tarpit holds the session for its delay, then refuses; its context
// ending ends the hold; and past max_tarpitted the refusal comes at once.
func TestTarpit(t *testing.T) {
	p, counter := build(t, `max_tarpitted = 1
[[ratelimit.rule]]
name = "slow"
event = "connection"
key = "client"
limit = 1
window = "1h"
action = "tarpit:300ms,tempfail"
`, nil)
	cn, _ := connect(p, "192.0.2.1")
	cn.Close()
	start := time.Now()
	cn, v := connect(p, "192.0.2.1")
	cn.Close()
	if v.Code != 451 || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("got %v after %s", v, time.Since(start))
	}
	// One session held: the next over the limit is refused at once.
	held := make(chan verdict.Verdict)
	go func() { cn, v := connect(p, "192.0.2.1"); cn.Close(); held <- v }()
	for counter.Take().Hits["ratelimit:slow delayed"] == 0 {
		time.Sleep(time.Millisecond)
	}
	cn, v = connect(p, "192.0.2.1")
	cn.Close()
	if v.Code != 451 {
		t.Fatalf("with the tarpit full: %v", v)
	}
	if got := counter.Take().Hits["ratelimit:slow tarpit full"]; got != 1 {
		t.Fatalf("tarpit full counted %d", got)
	}
	<-held
}

// A tarpit holds the session (it is still held well after the hold began)
// until the MTA hangs up, and no longer.
func TestTarpitEndsWithTheSession(t *testing.T) {
	p, counter := build(t, "[[ratelimit.rule]]\nname = \"slow\"\nevent = \"connection\"\nkey = \"client\"\nlimit = 1\nwindow = \"1h\"\naction = \"tarpit:20s\"\n", nil)
	cn, _ := connect(p, "192.0.2.1")
	cn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cn = p.Open(ctx, &pipeline.Conn{Addr: "192.0.2.1"})
	defer cn.Close()
	done := make(chan verdict.Verdict)
	go func() { done <- cn.Connect() }()
	for counter.Take().Hits["ratelimit:slow delayed"] == 0 {
		time.Sleep(time.Millisecond)
	}
	select {
	case v := <-done:
		t.Fatalf("the tarpit let the session go at once: %v", v)
	case <-time.After(200 * time.Millisecond):
	}
	cancel() // the MTA hung up
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the tarpit held a session whose MTA hung up")
	}
}

func TestConfigErrors(t *testing.T) {
	cases := map[string]string{
		"[[ratelimit.rule]]\nevent = \"mails\"\nkey = \"client\"\nlimit = 1\nwindow = \"1m\"":                            `event "mails"`,
		"[[ratelimit.rule]]\nevent = \"connection\"\nkey = \"sender\"\nlimit = 1\nwindow = \"1m\"":                       `key "sender" is not known at connect`,
		"[[ratelimit.rule]]\nevent = \"message\"\nkey = \"client\"\nlimit = 0\nwindow = \"1m\"":                          "limit 0",
		"[[ratelimit.rule]]\nevent = \"message\"\nkey = \"client\"\nlimit = 5\nwindow = \"soon\"":                        `window "soon"`,
		"[[ratelimit.rule]]\nevent = \"message\"\nkey = \"client\"\nlimit = 5\nwindow = \"1m\"\naction = \"tarpit:25s\"": "tarpit delay 25s must end at least 1s before timeout",
		"[[ratelimit.rule]]\nevent = \"message\"\nkey = \"client\"\nlimit = 5\nwindow = \"1m\"\naction = \"slow\"":       `action "slow"`,
		"backend = \"mysql://x\"": `want "memory" or a Redis URL`,
		"":                        "the ratelimit filter needs [ratelimit] rule",
	}
	for section, want := range cases {
		cfg, err := filters.Parse("t.toml", []byte("filters = [\"ratelimit\"]\n[ratelimit]\n"+section+"\n"))
		if err == nil {
			err = filters.Check(cfg, pipeline.Env{Log: logging.Discard()})
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", section, err, want)
		}
	}
}

// BenchmarkCheck is one connection's check (a connection rule and a
// concurrency limit) through the pipeline, with each backend.
func BenchmarkCheck(b *testing.B) {
	rules := `[[ratelimit.rule]]
event = "connection"
key = "client"
limit = 1000000000
window = "1m"
[[ratelimit.rule]]
event = "concurrency"
key = "client"
limit = 1000000
`
	for _, backend := range []string{"memory", "redis"} {
		b.Run(backend, func(b *testing.B) {
			section := rules
			if backend == "redis" {
				section = "backend = \"" + testserver.StartRedis(b).URL() + "\"\n" + rules
			}
			cfg, err := filters.Parse("b.toml", []byte("filters = [\"ratelimit\"]\n[ratelimit]\n"+section))
			if err != nil {
				b.Fatal(err)
			}
			p, err := filters.Build(cfg, pipeline.Env{Log: logging.Discard(), Now: time.Now})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				cn, v := connect(p, "192.0.2.1")
				cn.Close()
				if v.Final() {
					b.Fatal(v)
				}
			}
		})
	}
}
