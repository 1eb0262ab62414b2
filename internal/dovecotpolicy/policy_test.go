package dovecotpolicy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"mailguard/internal/ratecount"
	"mailguard/internal/stats"
	"mailguard/internal/testserver"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }
func newClock() *clock               { return &clock{now: time.Unix(1_700_000_000, 0)} }
func mustRule(t testing.TB, rc RuleConfig) Rule {
	t.Helper()
	r, err := rc.parse()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// door is a handler on a test server with its log and counters.
type door struct {
	url   string
	logs  *testserver.LockedBuffer
	stats *stats.Counter
	h     *Handler
}

func newDoor(t testing.TB, c *Config, counter ratecount.Counter) *door {
	t.Helper()
	var rules []Rule
	for _, rc := range c.Rules {
		rules = append(rules, mustRule(t, rc))
	}
	exempt, err := parseExempt(c.Exempt)
	if err != nil {
		t.Fatal(err)
	}
	d := &door{logs: &testserver.LockedBuffer{}, stats: stats.NewCounter()}
	log := slog.New(slog.NewTextHandler(d.logs, nil))
	p := New(Options{Rules: rules, Counter: counter, Exempt: exempt, RememberSuccess: c.RememberSuccess.Duration,
		Timeout: c.Timeout.Duration, Log: log, Stats: d.stats})
	d.h = NewHandler(p, c, log, d.stats)
	srv := httptest.NewServer(d.h)
	t.Cleanup(srv.Close)
	d.url = srv.URL
	return d
}

func guessingConfig() *Config {
	c := defaults()
	c.Rules = []RuleConfig{{Name: "guessing", Event: "failure", Key: "client", Limit: 5, Window: "10m", Action: "delay:3s,reject", RejectLimit: 8}}
	return c
}

// ask posts one command and returns the status Dovecot would read.
func (d *door) ask(t testing.TB, command string, req map[string]any) int {
	t.Helper()
	body, _ := json.Marshal(req)
	resp, err := http.Post(d.url+"/?command="+command, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s: HTTP %d", command, resp.StatusCode)
	}
	var a struct {
		Status *int   `json:"status"`
		Msg    string `json:"msg"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || a.Status == nil {
		t.Fatalf("%s: answer %v %v", command, a, err)
	}
	return *a.Status
}

// attempt is one login as Dovecot runs it: allow, then the outcome.
func (d *door) attempt(t testing.TB, user, pw, remote string, ok bool) int {
	t.Helper()
	req := map[string]any{"login": user, "pwhash": pw, "remote": remote, "protocol": "pop3"}
	status := d.ask(t, "allow", req)
	if status < 0 {
		ok = false
	}
	req["success"], req["policy_reject"] = ok, status < 0
	d.ask(t, "report", req)
	return status
}

func TestGuessingDelayedThenRefused(t *testing.T) {
	clk := newClock()
	d := newDoor(t, guessingConfig(), ratecount.NewMemory(clk.Now))
	for i := 1; i <= 5; i++ {
		if s := d.attempt(t, "alice", "bad", "192.0.2.7", false); s != 0 {
			t.Fatalf("failure %d answered %d", i, s)
		}
	}
	// Past the limit: even the right password waits 3 s.
	if s := d.attempt(t, "alice", "abc", "192.0.2.7", false); s != 3 {
		t.Fatalf("6th attempt: status %d, want 3", s)
	}
	if s := d.attempt(t, "bob", "def", "198.51.100.1", true); s != 0 {
		t.Fatalf("another client: status %d", s)
	}
	d.attempt(t, "alice", "bad", "192.0.2.7", false)
	d.attempt(t, "alice", "bad", "192.0.2.7", false)
	// 8 failures: refused.
	if s := d.attempt(t, "alice", "abc", "192.0.2.7", false); s != -1 {
		t.Fatalf("past reject_limit: status %d, want -1", s)
	}
	if !strings.Contains(d.logs.String(), "msg=decision filter=dovecot_policy verdict=reject rule=guessing count=8 limit=8 client=192.0.2.7 login=alice protocol=pop3") {
		t.Errorf("no decision line:\n%s", d.logs)
	}
	hits := d.stats.Take().Hits
	if hits["dovecot_policy:guessing delayed"] != 3 || hits["dovecot_policy:guessing rejected"] != 1 {
		t.Errorf("counters: %v", hits)
	}
	// The window passes: allowed again.
	clk.Add(21 * time.Minute)
	if s := d.attempt(t, "alice", "abc", "192.0.2.7", true); s != 0 {
		t.Fatalf("after the window: status %d", s)
	}
}

func TestKnownPasswordExempt(t *testing.T) {
	c := defaults()
	c.Rules = []RuleConfig{{Name: "per-user", Event: "failure", Key: "user", Limit: 3, Window: "1h", Action: "reject"}}
	d := newDoor(t, c, ratecount.NewMemory(newClock().Now))
	d.attempt(t, "carol", "a1b", "203.0.113.9", true) // the user's own device
	for i := 0; i < 5; i++ {
		d.attempt(t, "carol", fmt.Sprintf("f%02d", i), fmt.Sprintf("192.0.2.%d", i), false) // a botnet
	}
	if s := d.attempt(t, "carol", "f99", "192.0.2.99", false); s != -1 {
		t.Fatalf("a new guess: status %d, want -1", s)
	}
	if s := d.attempt(t, "carol", "a1b", "203.0.113.9", true); s != 0 {
		t.Fatalf("the known password was refused: %d", s)
	}
	if d.stats.Take().Hits["dovecot_policy:known password"] != 1 {
		t.Error("known password not counted")
	}
}

func TestExemptNetworkAndKeys(t *testing.T) {
	c := defaults()
	c.Exempt = []string{"10.0.0.0/8"}
	c.Rules = []RuleConfig{{Name: "net", Event: "login", Key: "network", Limit: 2, Window: "1m", Action: "reject"},
		{Name: "acct", Event: "failure", Key: "user", Limit: 1, Window: "1m", Action: "reject"}}
	d := newDoor(t, c, ratecount.NewMemory(newClock().Now))
	// An account refused elsewhere is still served from the exempt network.
	d.attempt(t, "x", "h", "198.51.100.1", false)
	if s := d.attempt(t, "x", "h2", "198.51.100.2", false); s != -1 {
		t.Fatalf("the account rule did not refuse: %d", s)
	}
	if s := d.attempt(t, "x", "h3", "10.9.9.9", true); s != 0 {
		t.Fatalf("from the exempt network: %d", s)
	}
	for i := 0; i < 5; i++ {
		if s := d.attempt(t, "u", "h", "10.1.2.3", true); s != 0 {
			t.Fatalf("exempt network refused: %d", s)
		}
	}
	d.attempt(t, "u", "h", "192.0.2.1", true)
	d.attempt(t, "v", "h", "192.0.2.200", true)
	if s := d.attempt(t, "w", "h", "192.0.2.77", true); s != -1 {
		t.Fatalf("the /24's third login: %d", s)
	}
	if s := d.attempt(t, "y", "h", "192.0.3.77", true); s != 0 {
		t.Fatalf("another /24: %d", s)
	}
	// No address: a network rule has nothing to count.
	if s := d.attempt(t, "z", "h", "", true); s != 0 {
		t.Fatalf("no address: %d", s)
	}
}

type failing struct{}

func (failing) Take(context.Context, []ratecount.Op) (int, int64, error) {
	return -1, 0, fmt.Errorf("redis 127.0.0.1:1: connection refused")
}
func (failing) Add(context.Context, string, int64, time.Duration) error { return nil }
func (failing) Release(context.Context, string, string) error           { return nil }

func TestBackendFailureAllowsAndIsCounted(t *testing.T) {
	d := newDoor(t, guessingConfig(), failing{})
	if s := d.attempt(t, "alice", "x", "192.0.2.7", false); s != 0 {
		t.Fatalf("status %d", s)
	}
	if hits := d.stats.Take().Hits; hits["dovecot_policy:error"] != 2 {
		t.Errorf("counters: %v", hits)
	}
	if !strings.Contains(d.logs.String(), "counting failed") {
		t.Errorf("not logged:\n%s", d.logs)
	}
	c := guessingConfig()
	c.OnError = "reject"
	d = newDoor(t, c, failing{})
	if s := d.ask(t, "allow", map[string]any{"login": "a", "remote": "192.0.2.1"}); s != -1 {
		t.Fatalf("on_error reject: %d", s)
	}
}

func TestMonitorAllows(t *testing.T) {
	c := guessingConfig()
	c.Mode = "monitor"
	d := newDoor(t, c, ratecount.NewMemory(newClock().Now))
	for i := 0; i < 12; i++ {
		if s := d.attempt(t, "alice", "bad", "192.0.2.7", false); s != 0 {
			t.Fatalf("monitor answered %d", s)
		}
	}
	if !strings.Contains(d.logs.String(), "verdict=\"would reject\"") {
		t.Errorf("no would-reject line:\n%s", d.logs)
	}
}

func TestOrderHarshestFirst(t *testing.T) {
	p := New(Options{Rules: []Rule{
		{Name: "short", Delay: time.Second, Limit: 1},
		{Name: "ban", Reject: true, RejectLimit: 9},
		{Name: "long", Delay: 30 * time.Second, Limit: 2},
	}})
	var got []string
	for _, th := range p.thresholds {
		got = append(got, p.opts.Rules[th.rule].Name)
	}
	if strings.Join(got, ",") != "ban,long,short" {
		t.Fatalf("order %v", got)
	}
}

func TestParseExempt(t *testing.T) {
	got, err := parseExempt([]string{"192.0.2.1", "2001:db8::/32", "::ffff:10.0.0.0/104"})
	if err != nil || len(got) != 3 || !got[2].Contains(netip.MustParseAddr("10.9.9.9")) {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []string{"mx.example.org", "192.0.2.1/24", "helo:x"} {
		if _, err := parseExempt([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// Dovecot asks twice about a login with the right password, the same
// attributes both times: one decision line. A new password in the same
// session is a new attempt.
func TestSecondQuestionNotLoggedAgain(t *testing.T) {
	d := newDoor(t, guessingConfig(), ratecount.NewMemory(newClock().Now))
	for i := 0; i < 5; i++ {
		d.attempt(t, "alice", "bad", "192.0.2.7", false)
	}
	req := map[string]any{"login": "alice", "pwhash": "abc", "remote": "192.0.2.7", "session_id": "S1"}
	for i := 0; i < 2; i++ {
		if s := d.ask(t, "allow", req); s != 3 {
			t.Fatalf("question %d: %d", i+1, s)
		}
	}
	req["pwhash"] = "abd"
	d.ask(t, "allow", req)
	if n := strings.Count(d.logs.String(), "msg=decision"); n != 2 {
		t.Fatalf("%d decision lines, want 2:\n%s", n, d.logs)
	}
}

func TestRuleConfigErrors(t *testing.T) {
	good := RuleConfig{Event: "failure", Key: "client", Limit: 5, Window: "10m", Action: "delay:5s,reject"}
	if r, err := good.parse(); err != nil || r.RejectLimit != 10 || r.Name != "failure-per-client" {
		t.Fatalf("%+v %v", r, err)
	}
	for _, c := range []struct {
		edit func(*RuleConfig)
		says string
	}{
		{func(r *RuleConfig) { r.Event = "connect" }, "event"},
		{func(r *RuleConfig) { r.Key = "sender" }, "key"},
		{func(r *RuleConfig) { r.Limit = 0 }, "limit"},
		{func(r *RuleConfig) { r.Window = "1ms" }, "window"},
		{func(r *RuleConfig) { r.Action = "delay:500ms" }, "action"},
		{func(r *RuleConfig) { r.Action = "delay:1h" }, "action"},
		{func(r *RuleConfig) { r.Action = "tarpit:5s" }, "action"},
		{func(r *RuleConfig) { r.Action = "reject,delay:5s" }, "action"},
		{func(r *RuleConfig) { r.RejectLimit = 5 }, "reject_limit"},
		{func(r *RuleConfig) { r.Action = "delay:5s"; r.RejectLimit = 9 }, "reject_limit"},
	} {
		rc := good
		c.edit(&rc)
		if _, err := rc.parse(); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%+v: %v, want an error about %s", rc, err, c.says)
		}
	}
}
