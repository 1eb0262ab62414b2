package e2e

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"mailguard/internal/loadgen"
)

// The short version of scripts/load (docs/reliability/load.md): mailguard
// serve with the ratelimit and virus filters under loadConns slow
// connections at once, with fast connections before, during and after
// them and slow-loris peers meanwhile; and what each idle, mid-message
// and tarpitted connection costs, against the bounds of the README's
// limits table. No timed assertions: the latency ratio is logged; the
// slow-loris peers must be closed by the daemon, long before they would
// give up.
const loadConns = 150

// perConnBound is the Go heap and stacks one connection may add: the
// README's figures (1,000 of each, without the race detector: 12, 79
// and 21 KB) with room for a noisy sample of fewer connections and for
// the race detector's build.
var perConnBound = map[loadgen.HoldState]float64{
	loadgen.HoldIdle:       24 << 10,
	loadgen.HoldMidMessage: 96 << 10,
	loadgen.HoldTarpitted:  40 << 10,
}

// loadConfig is the daemon of the load tests: the ratelimit and virus
// filters; the load's clients (192.0.2.0/24) are exempt, 203.0.113.9 is
// tarpitted from its second connection on.
func loadConfig(idle string, httpPort int) string {
	return fmt.Sprintf(`listen = "LISTEN"
filters = ["ratelimit", "virus"]
idle_timeout = %q
max_connections = %d

[http]
listen = "127.0.0.1:%d"

[log]
level = "warn"

[ratelimit]
exempt = ["192.0.2.0/24"]
timeout = "15s"
max_tarpitted = %d

[[ratelimit.rule]]
name = "looper"
event = "connection"
key = "client"
limit = 1
window = "1h"
action = "tarpit:12s,tempfail"
`, idle, 3*loadConns+100, httpPort, loadConns+10)
}

// What each idle, mid-message and tarpitted connection adds to the
// daemon's Go heap and stacks, loadConns of each held at once.
func TestLoadMemoryPerConnection(t *testing.T) {
	// A collection at every 10% of growth: the heap in use is then what
	// the connections hold, not the garbage of their setting up.
	t.Setenv("GOGC", "10")
	port, httpPort := twoPorts(t)
	d := startMailguardOn(t, port, loadConfig("10m", httpPort), nil)
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort)
	rep, err := loadgen.MeasureConnections(loadgen.MemoryOptions{Network: "tcp", Address: fmt.Sprintf("127.0.0.1:%d", d.port),
		Count: loadConns, PID: d.cmd.Process.Pid, MetricsURL: metrics, TarpitClient: "203.0.113.9", Settle: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range rep.States {
		t.Logf("%s: %d held, %d sessions: %.1f KB Go heap and stacks, %.1f KB resident per connection",
			s.State, s.Held, s.Sessions, s.GoPerConn/1024, s.RSSPerConn/1024)
		if bound := perConnBound[s.State] * raceFactor(); s.GoPerConn > bound {
			t.Errorf("%s: %.0f bytes per connection, over %.0f", s.State, s.GoPerConn, bound)
		}
	}
	// The first tarpitted connection is within its limit, and may end.
	if want := 3 * loadConns; rep.Peak.Sessions < want-1 {
		t.Errorf("%d sessions with all held, want %d", rep.Peak.Sessions, want)
	}
	noRaces(t, d)
}

// noRaces fails the test if the daemon (built with the race detector when
// the tests run with it) reported a data race.
func noRaces(t *testing.T, d *daemon) {
	t.Helper()
	if strings.Contains(d.logs.String(), "WARNING: DATA RACE") {
		t.Error("the daemon reported a data race")
	}
}

// raceFactor allows for the race detector's build: its goroutines'
// stacks are about twice as large.
func raceFactor() float64 {
	if len(raceFlags) > 0 {
		return 2
	}
	return 1
}

func TestLoadSlowConnections(t *testing.T) {
	port, httpPort := twoPorts(t)
	d := startMailguardOn(t, port, loadConfig("5s", httpPort), nil)
	addr := fmt.Sprintf("127.0.0.1:%d", d.port)
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort)

	dir := t.TempDir()
	if err := loadgen.Generate(loadgen.GenerateOptions{Dir: dir, Count: 30, Size: 12000, Infect: []byte(sobig), InfectEvery: 5, Seed: 7}); err != nil {
		t.Fatal(err)
	}
	corpus, err := loadgen.LoadCorpus(dir)
	if err != nil {
		t.Fatal(err)
	}
	fast := func() *loadgen.Result {
		r, err := loadgen.Run(loadgen.Options{Network: "tcp", Address: addr, Corpus: corpus, Concurrency: 4, Messages: 60})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int{}
		for i := range 60 {
			want[sobigVerdict(&corpus[i%len(corpus)])]++
		}
		if r.Errors != 0 || fmt.Sprint(r.Verdicts) != fmt.Sprint(want) {
			t.Errorf("fast connections: %d errors (%s), verdicts %v, want %v", r.Errors, r.FirstError, r.Verdicts, want)
		}
		return r
	}
	var without, with []time.Duration
	for range 2 {
		without = append(without, fast().Latencies...)
	}

	base, err := loadgen.SampleMemory(0, metrics)
	if err != nil {
		t.Fatal(err)
	}
	run, err := loadgen.StartSlow(loadgen.SlowOptions{Network: "tcp", Address: addr, Corpus: corpus, Connections: loadConns,
		PerConnection: 2, GapMin: 20 * time.Millisecond, GapMax: 200 * time.Millisecond, Expect: sobigVerdict})
	if err != nil {
		t.Fatal(err)
	}
	lorises := make(chan loadgen.LorisResult, 3)
	for _, st := range []loadgen.LorisStage{loadgen.LorisNegotiation, loadgen.LorisPacket, loadgen.LorisBody} {
		go func() {
			lorises <- loadgen.Loris(loadgen.LorisOptions{Network: "tcp", Address: addr, Stage: st, Gap: 500 * time.Millisecond, Limit: time.Minute})
		}()
	}
	<-run.Ready()
	var peak loadgen.MemorySample
	finished := make(chan *loadgen.SlowResult, 1)
	go func() { finished <- run.Wait() }()
	var res *loadgen.SlowResult
	for res == nil {
		if m, err := loadgen.SampleMemory(0, metrics); err == nil && m.Go() > peak.Go() {
			peak = m
		}
		with = append(with, fast().Latencies...)
		select {
		case res = <-finished:
		default:
		}
	}
	for range 2 {
		without = append(without, fast().Latencies...)
	}
	t.Logf("slow: %d connections, %d at once, %d messages in %s, verdicts %v", res.Connections, res.PeakOpen, res.Messages, res.Elapsed, res.Verdicts)
	if res.Connections != loadConns || res.Messages != 2*loadConns || res.Errors != 0 || res.Wrong != 0 {
		t.Errorf("slow connections: %+v", res)
	}
	perSlow := float64(peak.Go()-base.Go()) / float64(res.PeakOpen)
	t.Logf("Go heap and stacks: %d KB before, %d KB at the peak: %.1f KB per slow connection (at the peak, with the fast ones)", base.Go()>>10, peak.Go()>>10, perSlow/1024)
	if perSlow > perConnBound[loadgen.HoldMidMessage]*raceFactor()*2 {
		t.Errorf("%.0f bytes per slow connection", perSlow)
	}
	slices.Sort(without)
	slices.Sort(with)
	p := func(l []time.Duration, q float64) time.Duration { return l[min(len(l)-1, int(q*float64(len(l))))] }
	t.Logf("fast connections: p50 %s / %s, p99 %s / %s with / without the slow ones (ratio %.2f, %.2f)",
		p(with, .5), p(without, .5), p(with, .99), p(without, .99),
		float64(p(with, .5))/float64(p(without, .5)), float64(p(with, .99))/float64(p(without, .99)))

	for range 3 {
		r := <-lorises
		t.Logf("slow-loris peer, %s: closed %v after %s, %d bytes", r.Stage, r.Closed, r.After.Round(100*time.Millisecond), r.Sent)
		if r.Err != nil || !r.Closed {
			t.Errorf("slow-loris peer, %s: closed %v after %s (%d bytes): %v", r.Stage, r.Closed, r.After, r.Sent, r.Err)
		}
	}
	// The daemon keeps serving, with nothing left open.
	fast()
	waitSessions(t, metrics, 0)
	noRaces(t, d)
}

func sobigVerdict(m *loadgen.Message) string {
	if bytes.Contains(m.Body, []byte(sobig)) {
		return "550 5.7.0"
	}
	return "accept"
}

// twoPorts returns two different free ports: the milter's and the HTTP
// listener's.
func twoPorts(t *testing.T) (int, int) {
	a := freePort(t)
	for {
		if b := freePort(t); b != a {
			return a, b
		}
	}
}

// waitSessions waits until the daemon has n sessions in flight.
func waitSessions(t *testing.T, metrics string, n int) {
	t.Helper()
	var m loadgen.MemorySample
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var err error
		if m, err = loadgen.SampleMemory(0, metrics); err == nil && m.Sessions == n {
			return
		}
	}
	t.Fatalf("%d sessions in flight, want %d", m.Sessions, n)
}
