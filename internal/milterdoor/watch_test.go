package milterdoor

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/pipeline"
	"mailguard/internal/verdict"
)

// eomFilter decides at the end of the message; hold makes its next end
// of message wait for release, and each end of message reports its
// context's error on ctxErr.
type eomFilter struct {
	pipeline.NopCheck
	hold    atomic.Bool
	release chan struct{}
	ctxErr  chan error
}

func (f *eomFilter) Name() string { return "eom" }
func (f *eomFilter) Stages() (reads, decides pipeline.Stage) {
	return 0, pipeline.StageEndOfMessage
}
func (f *eomFilter) NewCheck(context.Context, *pipeline.Envelope) (pipeline.Check, error) {
	return f, nil
}
func (f *eomFilter) EndOfMessage(ctx context.Context, _ *pipeline.Envelope) (verdict.Verdict, error) {
	if f.hold.Swap(false) {
		<-f.release
	}
	f.ctxErr <- ctx.Err()
	return verdict.Pass, nil
}

// A watch whose stage ends while it wakes must not take its own wake-up
// for the MTA giving up: the connection, and its next message, go on.
// The hook holds the watch until both the stage's end and the woken read
// are ready, so without the check of quit first select picks the read
// half the time; 30 rounds.
func TestWatchEndingIsNotAHangUp(t *testing.T) {
	f := &eomFilter{release: make(chan struct{}), ctxErr: make(chan error, 1)}
	var logs bytes.Buffer
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(&lockedBuf{b: &logs, mu: &logMu}, nil))
	p := pipeline.New(pipeline.Env{Log: log, Now: time.Now}, pipeline.Member{Filter: f, Timeout: time.Minute})
	d := New(p, log, Options{WatchDelay: 20 * time.Millisecond, ProgressInterval: time.Hour})
	watching := make(chan struct{})
	d.beforeWatchSelect = func(quit <-chan struct{}, gone <-chan error) {
		if gone == nil {
			return
		}
		watching <- struct{}{}
		<-quit
		for len(gone) == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go d.Serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.Shutdown(ctx)
	}()
	message := func(s *milter.ClientSession) {
		for _, step := range []func() (*milter.Action, error){
			func() (*milter.Action, error) { return s.Mail("a@example.org", "") },
			func() (*milter.Action, error) { return s.Rcpt("u@example.edu", "") },
			func() (*milter.Action, error) { return s.DataStart() },
			func() (*milter.Action, error) { return s.HeaderEnd() },
			func() (*milter.Action, error) { return s.BodyChunk([]byte("x\r\n")) },
		} {
			if _, err := step(); err != nil {
				t.Fatal(err)
			}
		}
		if _, act, err := s.End(); err != nil || act.Type != milter.ActionAccept {
			t.Fatalf("end of message: %+v, %v", act, err)
		}
	}
	for round := 0; round < 30; round++ {
		s, err := milter.NewClient("tcp", ln.Addr().String()).Session(milter.NewMacroBag())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Conn("mx.example.org", milter.FamilyInet, 25, "192.0.2.1"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Helo("mx.example.org"); err != nil {
			t.Fatal(err)
		}
		f.hold.Store(true)
		done := make(chan struct{})
		go func() { defer close(done); message(s) }()
		select {
		case <-watching:
		case <-done:
			t.FailNow() // message has said why
		}
		f.release <- struct{}{}
		<-done
		if err := <-f.ctxErr; err != nil {
			t.Fatalf("round %d: the watched call's context: %v", round, err)
		}
		message(s) // the next message on the same connection
		if err := <-f.ctxErr; err != nil {
			t.Fatalf("round %d: the next message's context was cancelled: %v", round, err)
		}
		s.Close()
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), "MTA gave up waiting") {
		t.Fatalf("a watch took the stage's end for the MTA giving up:\n%s", logs.String())
	}
}
