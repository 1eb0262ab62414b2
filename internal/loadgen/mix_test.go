package loadgen

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func testMix(t *testing.T) *Mix {
	t.Helper()
	m, err := NewMix(t.TempDir(), MixServers{Clamd: "unix:/nonexistent", ClamdName: "Eicar", DNS: "127.0.0.1:53"})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestMixPlan: a session is the same every time it is asked for, every
// class of traffic occurs with an expectation, clients are their session's
// own (but for the refused ones), and the first worm copies come from
// distinct networks (MixCheck counts on it).
func TestMixPlan(t *testing.T) {
	m := testMix(t)
	if !reflect.DeepEqual(m.Session(1234), m.Session(1234)) {
		t.Fatal("a session differs between two calls")
	}
	classes := map[string]int{}
	clients := map[string]int{}
	wormNets := map[string]int{}
	for i := 0; i < 5000+MixClients; i++ {
		s := m.Session(i)
		if len(s.Messages) == 0 {
			t.Fatalf("session %d has no message", i)
		}
		if !strings.HasPrefix(s.Client, "192.0.2.") && !strings.HasPrefix(s.Client, "203.0.113.") {
			if j, seen := clients[s.Client]; seen && i-j < MixClients {
				t.Fatalf("sessions %d and %d share client %s", j, i, s.Client)
			}
			clients[s.Client] = i
		}
		if s.Parallel != "" {
			classes["parallel"]++
		}
		for k, msg := range s.Messages {
			classes[msg.Class]++
			if msg.Class == ClassOutbreak {
				network := s.Client[:strings.LastIndexByte(s.Client, '.')]
				if j, seen := wormNets[network]; seen && i-j < 4096 {
					t.Fatalf("worm copies of sessions %d and %d come from one network", j, i)
				}
				wormNets[network] = i
				continue
			}
			if msg.Expect == "" {
				t.Fatalf("session %d message %d (%s) has no expected verdict", i, k, msg.Class)
			}
			if msg.Stop == Hangup && k != len(s.Messages)-1 {
				t.Fatalf("session %d goes on after a dropped connection", i)
			}
		}
	}
	for _, c := range []string{"clean", "clean, 3 recipients", "virus signature", "EICAR (clamd)", "attachment setup.exe",
		"over quota", "over quota and another recipient", "over quota, from postmaster", "over quota, forwarding",
		"blocked sender", "blocked From:", "captured", "aborted mid-message", "connection lost mid-message",
		"refused client: on the DNS blocklist", "refused client: on the deny list", ClassOutbreak, "parallel"} {
		if classes[c] == 0 {
			t.Errorf("no %q traffic: %v", c, classes)
		}
	}
}

// TestMixFiles: the daemon's data is where the configuration says.
func TestMixFiles(t *testing.T) {
	m := testMix(t)
	cfg := m.Config("127.0.0.1:1")
	for _, name := range []string{"users", "signatures", "blocklist", "capture.on"} {
		path := filepath.Join(m.dir, name)
		if _, err := os.Stat(path); err != nil || !strings.Contains(cfg, path) {
			t.Errorf("%s: %v, in the configuration: %v", name, err, strings.Contains(cfg, path))
		}
	}
	users, _ := os.ReadFile(filepath.Join(m.dir, "users"))
	if !strings.Contains(string(users), mixFull+" ") || !strings.Contains(string(users), mixForward+" ") || !strings.Contains(string(users), " forward\n") {
		t.Errorf("users file:\n%s", users)
	}
}

func TestMixCheck(t *testing.T) {
	res := func(passed, held, other int) *Result {
		return &Result{Table: map[Outcome]int{
			{ClassOutbreak, "", "accept"}:          passed,
			{ClassOutbreak, "", ReplyHeld}:         held,
			{ClassOutbreak, "", "tempfail"}:        other,
			{"clean", "accept", "accept"}:          1000,
			{"clean", "accept", ReplyVirus}:        3,
			{"virus signature", ReplyVirus, "x"}:   1,
			{"refused client: clean", "x", "x"}:    2,
			{"parallel connection", "y", "y"}:      2,
			{"aborted mid-message", "aborted", ""}: 1,
		}}
	}
	for _, c := range []struct {
		passed, held, other int
		ok                  bool
	}{
		{10, 50, 0, true}, {7, 0, 0, true}, {0, 0, 0, true},
		{11, 49, 0, false}, {9, 51, 0, false}, {10, 49, 1, false}, {7, 1, 0, false},
	} {
		if got := MixCheck(res(c.passed, c.held, c.other)); (got == "") != c.ok {
			t.Errorf("%d passed, %d held, %d other: %q", c.passed, c.held, c.other, got)
		}
	}
}

// TestTallyCountsWrongVerdicts: a verdict other than the expected one is
// wrong; one without an expectation never is.
func TestTallyCountsWrongVerdicts(t *testing.T) {
	tl := newTally()
	tl.record(&Message{Name: "a", Class: "clean", Expect: "accept"}, "accept", 0)
	tl.record(&Message{Name: "b", Class: "clean", Expect: "accept"}, ReplyVirus, 0)
	tl.record(&Message{Name: "c", Class: ClassOutbreak}, ReplyHeld, 0)
	tl.count(&Message{Name: "d", Class: "parallel connection", Expect: ReplyRateLimit}, "accept")
	res := &Result{Verdicts: map[string]int{}, Table: map[Outcome]int{}}
	tl.addTo(res)
	if res.Wrong != 2 || !strings.Contains(res.FirstWrong, "b (clean)") || len(res.Latencies) != 3 || res.Table[Outcome{"clean", "accept", ReplyVirus}] != 1 {
		t.Fatalf("wrong %d (%s), %d latencies, table %v", res.Wrong, res.FirstWrong, len(res.Latencies), res.Table)
	}
}
