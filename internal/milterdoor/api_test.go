package milterdoor_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/milterdoor"
	"mailguard/internal/pipeline"
	"mailguard/internal/stats"
	"mailguard/internal/verdict"
)

// apiFilter is a filter whose end-of-message and body answers a test
// sets, for the parts of the filter API the door carries.
type apiFilter struct {
	pipeline.NopCheck
	eom    func(ctx context.Context, env *pipeline.Envelope) (verdict.Verdict, error)
	body   func(chunk []byte)
	macros map[pipeline.Stage][]string
	mods   pipeline.Modification
}

func (f *apiFilter) Name() string { return "api" }
func (f *apiFilter) Stages() (reads, decides pipeline.Stage) {
	return pipeline.StageBody, pipeline.StageEndOfMessage
}
func (f *apiFilter) NewCheck(context.Context, *pipeline.Envelope) (pipeline.Check, error) {
	return f, nil
}
func (f *apiFilter) Macros() map[pipeline.Stage][]string { return f.macros }
func (f *apiFilter) Modifies() pipeline.Modification     { return f.mods }
func (f *apiFilter) Body(_ context.Context, chunk []byte) (verdict.Verdict, error) {
	if f.body != nil {
		f.body(chunk)
	}
	return verdict.Pass, nil
}
func (f *apiFilter) EndOfMessage(ctx context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	if f.eom == nil {
		return verdict.Pass, nil
	}
	return f.eom(ctx, env)
}

func startDoorWith(t *testing.T, opts milterdoor.Options, members ...pipeline.Member) *testDoor {
	t.Helper()
	td := &testDoor{stats: stats.NewCounter(), logs: &bytes.Buffer{}}
	td.lw = &lockedWriter{w: td.logs}
	log := slog.New(slog.NewTextHandler(td.lw, nil))
	p := pipeline.New(pipeline.Env{Log: log, Stats: td.stats, Now: time.Now}, members...)
	td.door = milterdoor.New(p, log, opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	td.addr = ln.Addr().String()
	go td.door.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		td.door.Shutdown(ctx)
	})
	return td
}

func (td *testDoor) log() string {
	time.Sleep(20 * time.Millisecond)
	td.lw.mu.Lock()
	defer td.lw.mu.Unlock()
	return td.logs.String()
}

// raw speaks the milter protocol by hand, as an MTA that offers every
// action and no protocol flags, so the door answers every command.
type raw struct {
	t *testing.T
	c net.Conn
}

func dialRaw(t *testing.T, addr string) *raw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &raw{t: t, c: c}
	var neg [12]byte
	binary.BigEndian.PutUint32(neg[0:], 6)
	binary.BigEndian.PutUint32(neg[4:], 0x1ff)
	r.send('O', string(neg[:]))
	return r
}

func (r *raw) send(cmd byte, data ...string) {
	r.t.Helper()
	payload := strings.Join(data, "")
	pkt := binary.BigEndian.AppendUint32(nil, uint32(len(payload)+1))
	pkt = append(append(pkt, cmd), payload...)
	if _, err := r.c.Write(pkt); err != nil {
		r.t.Fatal(err)
	}
}

func (r *raw) read() (byte, []byte) {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var head [4]byte
	if _, err := io.ReadFull(r.c, head[:]); err != nil {
		r.t.Fatal(err)
	}
	pkt := make([]byte, binary.BigEndian.Uint32(head[:]))
	if _, err := io.ReadFull(r.c, pkt); err != nil {
		r.t.Fatal(err)
	}
	return pkt[0], pkt[1:]
}

// upToEnd runs negotiation, connect, MAIL, RCPT and one body chunk, reading
// the door's answer to each, and sends the end of the message.
func (r *raw) upToEnd() {
	r.t.Helper()
	r.read() // negotiation
	for _, p := range []struct {
		cmd  byte
		data string
	}{{'C', "mx.example.org\x004\x00\x19192.0.2.1\x00"}, {'M', "<a@example.org>\x00"}, {'R', "<u@example.edu>\x00"}, {'B', "hello\r\n"}} {
		r.send(p.cmd, p.data)
		if code, _ := r.read(); code != 'c' {
			r.t.Fatalf("answer to %q: %q", p.cmd, code)
		}
	}
	r.send('E')
}

// A filter that blocks past its timeout gets its on_error policy, the log
// and the counters call it a timeout, and the session goes on.
func TestTimeoutFollowsOnError(t *testing.T) {
	for _, c := range []struct {
		policy pipeline.ErrorPolicy
		want   milter.ActionType
	}{{pipeline.OnErrorTempFail, milter.ActionRejectWithCode}, {pipeline.OnErrorAccept, milter.ActionAccept}} {
		blocks := true
		f := &apiFilter{eom: func(ctx context.Context, _ *pipeline.Envelope) (verdict.Verdict, error) {
			if blocks {
				<-ctx.Done()
				return verdict.Pass, ctx.Err()
			}
			return verdict.Pass, nil
		}}
		td := startDoorWith(t, milterdoor.Options{}, pipeline.Member{Filter: f, OnError: c.policy, Timeout: 100 * time.Millisecond})
		s := newSession(t, td)
		connect(t, s)
		act := sendMessage(t, s, []byte("hello\r\n"), 100)
		if act.Type != c.want || c.want == milter.ActionRejectWithCode && !strings.HasPrefix(act.SMTPReply, "451 4.3.0") {
			t.Fatalf("%v: got %+v", c.policy, act)
		}
		if logs := td.log(); !strings.Contains(logs, "filter timed out") || strings.Contains(logs, "filter failed") {
			t.Errorf("%v: timeout not logged as a timeout:\n%s", c.policy, logs)
		}
		if hits := td.stats.Take().Hits; hits["api:timeout"] != 1 || hits["api:error"] != 0 {
			t.Errorf("%v: counters %v", c.policy, hits)
		}
		blocks = false
		assertAccept(t, sendMessage(t, s, []byte("hello\r\n"), 100))
	}
}

// An error is an error, not a timeout.
func TestErrorIsNotATimeout(t *testing.T) {
	f := &apiFilter{eom: func(context.Context, *pipeline.Envelope) (verdict.Verdict, error) {
		return verdict.Pass, errors.New("clamd said no")
	}}
	td := startDoorWith(t, milterdoor.Options{}, pipeline.Member{Filter: f, OnError: pipeline.OnErrorTempFail})
	s := newSession(t, td)
	connect(t, s)
	if act := sendMessage(t, s, []byte("x\r\n"), 10); !strings.HasPrefix(act.SMTPReply, "451 4.3.0") {
		t.Fatalf("got %+v", act)
	}
	if hits := td.stats.Take().Hits; hits["api:error"] != 1 || hits["api:timeout"] != 0 {
		t.Errorf("counters %v", hits)
	}
}

// The MTA hanging up while a filter works cancels the filter's context.
func TestDisconnectCancelsBlockedCall(t *testing.T) {
	entered, cancelled := make(chan struct{}), make(chan error, 1)
	f := &apiFilter{eom: func(ctx context.Context, _ *pipeline.Envelope) (verdict.Verdict, error) {
		close(entered)
		select {
		case <-ctx.Done():
			cancelled <- ctx.Err()
		case <-time.After(20 * time.Second):
			cancelled <- errors.New("never cancelled")
		}
		return verdict.Pass, ctx.Err()
	}}
	td := startDoorWith(t, milterdoor.Options{WatchDelay: 50 * time.Millisecond}, pipeline.Member{Filter: f, Timeout: time.Minute})
	r := dialRaw(t, td.addr)
	r.upToEnd()
	<-entered
	r.c.Close()
	select {
	case err := <-cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("filter's context: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the filter's call was not cancelled when the MTA hung up")
	}
}

// While a filter works at the end of the message, the MTA is told to keep
// waiting; the answer follows.
func TestProgressWhileFilterWorks(t *testing.T) {
	f := &apiFilter{eom: func(ctx context.Context, _ *pipeline.Envelope) (verdict.Verdict, error) {
		time.Sleep(500 * time.Millisecond)
		return verdict.Pass, nil
	}}
	td := startDoorWith(t, milterdoor.Options{WatchDelay: 20 * time.Millisecond, ProgressInterval: 100 * time.Millisecond}, pipeline.Member{Filter: f})
	r := dialRaw(t, td.addr)
	r.upToEnd()
	progress := 0
	for {
		code, _ := r.read()
		if code != 'p' {
			if code != 'a' {
				t.Fatalf("final answer %q", code)
			}
			break
		}
		progress++
	}
	if progress < 2 {
		t.Fatalf("%d progress replies in 500 ms at one per 100 ms", progress)
	}
	// The connection is still in step: the next message works.
	r.send('M', "<a@example.org>\x00")
	if code, _ := r.read(); code != 'c' {
		t.Fatalf("after progress: %q", code)
	}
}

// The drain timeout is a hard limit: a filter that waits on its context
// is cancelled, and one that ignores it cannot hold the daemon.
func TestDrainTimeoutIsAHardLimit(t *testing.T) {
	for _, honours := range []bool{true, false} {
		release := make(chan struct{})
		entered := make(chan struct{})
		f := &apiFilter{eom: func(ctx context.Context, _ *pipeline.Envelope) (verdict.Verdict, error) {
			close(entered)
			if honours {
				<-ctx.Done()
				return verdict.Pass, ctx.Err()
			}
			<-release
			return verdict.Pass, nil
		}}
		td := startDoorWith(t, milterdoor.Options{}, pipeline.Member{Filter: f, Timeout: time.Minute})
		r := dialRaw(t, td.addr)
		r.upToEnd()
		<-entered
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		start := time.Now()
		err := td.door.Shutdown(ctx)
		took := time.Since(start)
		cancel()
		close(release)
		switch {
		case honours && (!errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "1 sessions were still in flight")):
			t.Errorf("filter honouring its context: Shutdown = %v", err)
		case !honours && !errors.Is(err, milterdoor.ErrSessionsLeft):
			t.Errorf("filter ignoring its context: Shutdown = %v", err)
		}
		if took > 4*time.Second {
			t.Errorf("honours=%v: Shutdown took %v with a 100 ms drain", honours, took)
		}
	}
}

// Macros reach filters by name with libmilter's lifetimes, and the door
// asks the MTA for the ones filters read.
func TestMacrosPerStage(t *testing.T) {
	type seen struct {
		daemon, auth, rcpt, queue string
		port                      int
		family                    pipeline.Family
	}
	var mu sync.Mutex
	var got []seen
	f := &apiFilter{
		macros: map[pipeline.Stage][]string{pipeline.StageConnect: {"{daemon_name}"}, pipeline.StageMail: {"auth_authen"}, pipeline.StageRcpt: {"{rcpt_addr}"}},
		eom: func(_ context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
			mu.Lock()
			got = append(got, seen{env.Macro("daemon_name"), env.Macro("{auth_authen}"), env.Macro("rcpt_addr"), env.QueueID, env.Conn.Port, env.Conn.Family})
			mu.Unlock()
			return verdict.Pass, nil
		},
	}
	td := startDoorWith(t, milterdoor.Options{}, pipeline.Member{Filter: f})
	r := dialRaw(t, td.addr)
	code, neg := r.read()
	if code != 'O' || len(neg) < 12 {
		t.Fatalf("negotiation %q", code)
	}
	if actions := milter.OptAction(binary.BigEndian.Uint32(neg[4:])); actions&milter.OptSetMacros == 0 {
		t.Errorf("macro lists sent without the set-macros action: %v", actions)
	}
	lists := string(neg[12:])
	for _, want := range []string{"{daemon_name}\x00", "i {auth_authen}\x00", "i {rcpt_addr}\x00"} {
		if !strings.Contains(lists, want) {
			t.Errorf("macro request %q lacks %q", lists, want)
		}
	}
	steps := []struct {
		cmd  byte
		data string
	}{
		{'D', "C{daemon_name}\x00smtpd\x00"}, {'C', "mx.example.org\x004\x00\x19192.0.2.1\x00"},
		{'D', "M{auth_authen}\x00alice\x00i\x00Q1\x00"}, {'M', "<a@example.org>\x00"},
		{'D', "R{rcpt_addr}\x00u@example.edu\x00"}, {'R', "<u@example.edu>\x00"},
		{'B', "x"}, {'E', ""},
		// The next message has no AUTH and no RCPT macros of its own yet.
		{'D', "Mi\x00Q2\x00"}, {'M', "<b@example.org>\x00"}, {'R', "<v@example.edu>\x00"}, {'B', "x"}, {'E', ""},
	}
	for _, s := range steps {
		r.send(s.cmd, s.data)
		if s.cmd != 'D' {
			if code, _ := r.read(); code != 'c' && code != 'a' {
				t.Fatalf("answer to %q: %q", s.cmd, code)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := []seen{{"smtpd", "alice", "u@example.edu", "Q1", 25, pipeline.FamilyInet}, {"smtpd", "", "", "Q2", 25, pipeline.FamilyInet}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("macros seen %+v, want %+v", got, want)
	}
}

// Header changes reach the MTA at the end of a delivered message; when the
// MTA does not allow them, they are not sent and the log says so.
func TestHeaderChanges(t *testing.T) {
	f := &apiFilter{mods: pipeline.ModAddHeader | pipeline.ModChangeHeader,
		eom: func(_ context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
			env.AddHeader("X-Virus-Scanned", "mailguard")
			env.InsertHeader(0, "X-First", "top")
			env.ChangeHeader("Subject", 1, "[scanned] hello\r\nX-Injected: no")
			return verdict.Pass, nil
		}}
	td := startDoorWith(t, milterdoor.Options{}, pipeline.Member{Filter: f})
	s := newSession(t, td)
	connect(t, s)
	startBody(t, s, "a@example.org")
	s.BodyChunk([]byte("hello\r\n"))
	mods, act, err := s.End()
	if err != nil {
		t.Fatal(err)
	}
	assertAccept(t, act)
	var saw []string
	for _, m := range mods {
		kind := map[milter.ModifyActionType]string{milter.ActionAddHeader: "h", milter.ActionInsertHeader: "i", milter.ActionChangeHeader: "m"}[m.Type]
		saw = append(saw, kind+" "+m.HeaderName+"="+m.HeaderValue)
	}
	want := []string{"h X-Virus-Scanned=mailguard", "i X-First=top", "m Subject=[scanned] hello  X-Injected: no"}
	if strings.Join(saw, "|") != strings.Join(want, "|") {
		t.Fatalf("changes %q, want %q", saw, want)
	}

	// An MTA that allows no header changes.
	c := milter.NewClient("tcp", td.addr, milter.WithActions(milter.OptRemoveRcpt))
	s2, err := c.Session(milter.NewMacroBag())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	connect(t, s2)
	startBody(t, s2, "a@example.org")
	s2.BodyChunk([]byte("hello\r\n"))
	mods, _, err = s2.End()
	if err != nil || len(mods) != 0 {
		t.Fatalf("changes sent to an MTA that does not allow them: %+v %v", mods, err)
	}
	if logs := td.log(); !strings.Contains(logs, "header not changed") {
		t.Errorf("refused change not logged:\n%s", logs)
	}
	if hits := td.stats.Take().Hits; hits["api:change not made"] != 3 {
		t.Errorf("counters %v", hits)
	}
}

// A body chunk is valid only during the call: a filter that keeps the
// slice sees it overwritten by the next packet, one that copies keeps the
// body intact.
func TestBodyChunkValidity(t *testing.T) {
	var kept, copied [][]byte
	f := &apiFilter{body: func(chunk []byte) {
		kept = append(kept, chunk)
		copied = append(copied, bytes.Clone(chunk))
	}}
	td := startDoorWith(t, milterdoor.Options{}, pipeline.Member{Filter: f})
	s := newSession(t, td)
	connect(t, s)
	body := filler(3 * 60000)
	for i := range body[60000:120000] {
		body[60000+i] = 'x'
	}
	assertAccept(t, sendMessage(t, s, body, 60000))
	if got := bytes.Join(copied, nil); !bytes.Equal(got, body) {
		t.Fatalf("copied chunks do not make the body (%d of %d bytes)", len(got), len(body))
	}
	if bytes.Equal(bytes.Join(kept, nil), body) {
		t.Fatal("retained chunks survived later reads: the documented rule would be untested")
	}
}

// stateFilter keeps per-connection state and counts the states open.
type stateFilter struct {
	apiFilter
	open atomic.Int64
}

type stateOf struct {
	pipeline.NopConnState
	f *stateFilter
}

func (s stateOf) Close() { s.f.open.Add(-1) }

func (f *stateFilter) NewConnState(context.Context, *pipeline.Conn) (pipeline.ConnState, error) {
	f.open.Add(1)
	return stateOf{f: f}, nil
}

// A filter's connection state is closed however the connection ends: a
// normal quit, a hang-up mid-message, and shutdown.
func TestConnectionStateAlwaysClosed(t *testing.T) {
	f := &stateFilter{}
	td := startDoorWith(t, milterdoor.Options{}, pipeline.Member{Filter: f})
	s := newSession(t, td)
	connect(t, s)
	assertAccept(t, sendMessage(t, s, []byte("x\r\n"), 10))
	s.Close()
	hangup := dialRaw(t, td.addr)
	hangup.read()
	hangup.send('C', "mx.example.org\x004\x00\x19192.0.2.1\x00")
	hangup.read()
	hangup.send('M', "<a@example.org>\x00")
	hangup.read()
	hangup.c.Close()
	open := dialRaw(t, td.addr)
	open.read()
	open.send('C', "mx.example.org\x004\x00\x19192.0.2.1\x00")
	open.read()
	waitFor(t, func() bool { return f.open.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := td.door.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.open.Load(); n != 0 {
		t.Fatalf("%d connection states left open after shutdown", n)
	}
}

// A recipient removal the MTA does not allow is not reported as made.
func TestRemovalNotAllowed(t *testing.T) {
	f := &apiFilter{mods: pipeline.ModRemoveRcpt, eom: func(_ context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
		env.RemoveRcpt("user@example.edu", "test")
		return verdict.Pass, nil
	}}
	td := startDoorWith(t, milterdoor.Options{}, pipeline.Member{Filter: f})
	c := milter.NewClient("tcp", td.addr, milter.WithActions(milter.OptAddHeader))
	s, err := c.Session(milter.NewMacroBag())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	connect(t, s)
	startBody(t, s, "a@example.org")
	s.BodyChunk([]byte("x\r\n"))
	if mods, _, err := s.End(); err != nil || len(mods) != 0 {
		t.Fatalf("changes %+v, %v", mods, err)
	}
	logs := td.log()
	if !strings.Contains(logs, "recipient not removed") || strings.Contains(logs, `verdict="remove recipient"`) {
		t.Errorf("log:\n%s", logs)
	}
	if hits := td.stats.Take().Hits; hits["api:change not made"] != 1 || hits["api:remove recipient"] != 0 {
		t.Errorf("counters %v", hits)
	}
}

// An MTA that aborts while a filter works ends that message's calls only:
// the connection's next message gets a live context.
func TestAbortCancelsOnlyTheMessage(t *testing.T) {
	var calls atomic.Int64
	errs := make(chan error, 2)
	f := &apiFilter{eom: func(ctx context.Context, _ *pipeline.Envelope) (verdict.Verdict, error) {
		if calls.Add(1) == 1 {
			<-ctx.Done() // the first message waits until it is cancelled
			errs <- ctx.Err()
			return verdict.Pass, ctx.Err()
		}
		errs <- ctx.Err()
		return verdict.Pass, nil
	}}
	td := startDoorWith(t, milterdoor.Options{WatchDelay: 50 * time.Millisecond}, pipeline.Member{Filter: f, Timeout: time.Minute, OnError: pipeline.OnErrorAccept})
	r := dialRaw(t, td.addr)
	r.upToEnd()
	time.Sleep(200 * time.Millisecond)
	r.send('A')
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Fatalf("first message's call: %v", err)
	}
	r.read() // the door's answer to the first end of message
	for _, p := range []struct {
		cmd  byte
		data string
	}{{'M', "<b@example.org>\x00"}, {'R', "<u@example.edu>\x00"}, {'B', "x"}} {
		r.send(p.cmd, p.data)
		r.read()
	}
	r.send('E')
	if err := <-errs; err != nil {
		t.Fatalf("the next message's call started cancelled: %v", err)
	}
}
