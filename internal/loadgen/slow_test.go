package loadgen

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all"
	"mailguard/internal/milterdoor"
	"mailguard/internal/milterdoor/doortest"
	"mailguard/internal/pipeline"
)

const sobig = "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3"

// startDoor serves the configuration's filters on a loopback port with
// the door's options, as mailguard serve does.
func startDoor(t *testing.T, section string, opts milterdoor.Options) (*milterdoor.Door, string) {
	t.Helper()
	sigs := filepath.Join(t.TempDir(), "signatures")
	os.WriteFile(sigs, []byte("WORM_SOBIG.B = "+sobig+"\n"), 0o644)
	cfg, err := filters.Parse("m.toml", []byte(section+"\n[virus]\nsignatures = \""+sigs+"\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := filters.Build(cfg, pipeline.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Retire) // after the door's shutdown
	return doortest.Serve(t, p, opts)
}

func corpus(t *testing.T) []Message {
	t.Helper()
	dir := t.TempDir()
	if err := Generate(GenerateOptions{Dir: dir, Count: 12, Size: 6000, Infect: []byte(sobig), InfectEvery: 3, Seed: 5}); err != nil {
		t.Fatal(err)
	}
	msgs, err := LoadCorpus(dir)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

func expectSobig(m *Message) string {
	if bytes.Contains(m.Body, []byte(sobig)) {
		return "550 5.7.0"
	}
	return "accept"
}

// Slow connections all finish with the verdicts their messages deserve,
// open at once; a verdict other than the expected one is counted.
func TestSlowConnections(t *testing.T) {
	door, addr := startDoor(t, "", milterdoor.Options{IdleTimeout: 5 * time.Second})
	msgs := corpus(t)
	o := SlowOptions{Network: "tcp", Address: addr, Corpus: msgs, Connections: 40, PerConnection: 2,
		GapMin: time.Millisecond, GapMax: 15 * time.Millisecond, ChunkSize: 1000, Expect: expectSobig}
	run, err := StartSlow(o)
	if err != nil {
		t.Fatal(err)
	}
	<-run.Ready()
	res := run.Wait()
	if res.Connections != 40 || res.Messages != 80 || res.Errors != 0 || res.Wrong != 0 {
		t.Fatalf("%+v", res)
	}
	if res.Verdicts["550 5.7.0"] == 0 || res.Verdicts["accept"] == 0 || res.PeakOpen < 2 {
		t.Fatalf("verdicts %v, %d open at once", res.Verdicts, res.PeakOpen)
	}
	waitIdle(t, door)

	// The same messages expected to pass: the infected ones are wrong.
	o.Connections, o.Expect = 6, func(*Message) string { return "accept" }
	run, _ = StartSlow(o)
	if res := run.Wait(); res.Wrong != 4 || res.FirstWrong == "" {
		t.Fatalf("wrong verdicts not counted: %+v", res)
	}
}

// Each slow-loris peer that trickles bytes is closed by the door's
// timeouts (negotiation, idle counted from the packet's start); one that
// sends a whole packet every gap is activity and stays open.
func TestLoris(t *testing.T) {
	_, addr := startDoor(t, "", milterdoor.Options{NegotiationTimeout: 300 * time.Millisecond, IdleTimeout: 600 * time.Millisecond})
	// Limit is 5 idle timeouts: a peer still open then outlived them.
	results := make(chan LorisResult, len(LorisStages))
	for _, st := range LorisStages {
		go func() {
			results <- Loris(LorisOptions{Network: "tcp", Address: addr, Stage: st, Gap: 50 * time.Millisecond, Limit: 3 * time.Second})
		}()
	}
	for range LorisStages {
		r := <-results
		t.Logf("%s: closed %v after %s, %d bytes", r.Stage, r.Closed, r.After.Round(time.Millisecond), r.Sent)
		if r.Err != nil {
			t.Fatalf("%s: %v", r.Stage, r.Err)
		}
		if want := r.Stage != LorisBodyPackets; r.Closed != want || r.Sent < 5 {
			t.Errorf("%s: closed %v after %s having sent %d bytes; want closed %v", r.Stage, r.Closed, r.After, r.Sent, want)
		}
	}
}

// Held connections reach their state and stay open until Close; the
// tarpitted ones wait in the ratelimit filter's tarpit.
func TestHold(t *testing.T) {
	door, addr := startDoor(t, `filters = ["ratelimit", "virus"]
[ratelimit]
exempt = ["192.0.2.0/24"]
timeout = "20s"
[[ratelimit.rule]]
name = "tarpit"
event = "connection"
key = "client"
limit = 1
window = "1h"
action = "tarpit:15s,tempfail"
`, milterdoor.Options{})
	var all []*Held
	for i, st := range []HoldState{HoldIdle, HoldMidMessage, HoldTarpitted} {
		h, err := Hold(HoldOptions{Network: "tcp", Address: addr, Count: 20, State: st, Client: map[HoldState]string{HoldTarpitted: "203.0.113.9"}[st]})
		if err != nil || h.Failed != 0 || h.Len() != 20 {
			t.Fatalf("%s: %v, %+v", st, err, h)
		}
		all = append(all, h)
		if n := door.Active(); n != int64(20*(i+1)) {
			t.Fatalf("%s: %d sessions", st, n)
		}
	}
	time.Sleep(300 * time.Millisecond)
	m, err := SampleMemory(os.Getpid(), "")
	if err != nil || m.RSS == 0 {
		t.Fatalf("%+v %v", m, err)
	}
	for _, h := range all {
		h.Close()
	}
	waitIdle(t, door) // the tarpitted ones too, long before their 15 s
}

// waitIdle waits until the door has no session left.
func waitIdle(t *testing.T, door *milterdoor.Door) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); door.Active() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions left", door.Active())
		}
	}
}
