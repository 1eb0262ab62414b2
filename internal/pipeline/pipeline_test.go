package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mailguard/internal/stats"
	"mailguard/internal/verdict"
)

// fakeFilter answers from a script and counts open checks, so a test can
// see a leak.
type fakeFilter struct {
	name          string
	reads, decide Stage
	open          *atomic.Int64
	newErr        error
	body          func(chunk []byte) (verdict.Verdict, error)
	rcpt          func(rcpt string) (verdict.Verdict, error)
	eom           func(env *Envelope) (verdict.Verdict, error)
	bodyCalls     int
	eomCalls      int
}

func (f *fakeFilter) Name() string                   { return f.name }
func (f *fakeFilter) Stages() (reads, decides Stage) { return f.reads, f.decide }
func (f *fakeFilter) NewCheck(context.Context, *Envelope) (Check, error) {
	if f.newErr != nil {
		return nil, f.newErr
	}
	f.open.Add(1)
	return &fakeCheck{f: f}, nil
}

type fakeCheck struct {
	NopCheck
	f *fakeFilter
}

func (c *fakeCheck) Body(_ context.Context, chunk []byte) (verdict.Verdict, error) {
	c.f.bodyCalls++
	if c.f.body == nil {
		return verdict.Pass, nil
	}
	return c.f.body(chunk)
}

func (c *fakeCheck) Rcpt(_ context.Context, _ *Envelope, rcpt, _ string) (verdict.Verdict, error) {
	if c.f.rcpt == nil {
		return verdict.Pass, nil
	}
	return c.f.rcpt(rcpt)
}

func (c *fakeCheck) EndOfMessage(_ context.Context, env *Envelope) (verdict.Verdict, error) {
	c.f.eomCalls++
	if c.f.eom == nil {
		return verdict.Pass, nil
	}
	return c.f.eom(env)
}

func (c *fakeCheck) Close() { c.f.open.Add(-1) }

func testEnv() (Env, *bytes.Buffer) {
	var logs bytes.Buffer
	return Env{Log: slog.New(slog.NewTextHandler(&logs, nil)), Stats: stats.NewCounter(), Now: time.Now}, &logs
}

func newFake(name string, open *atomic.Int64) *fakeFilter {
	return &fakeFilter{name: name, reads: StageBody, decide: StageEndOfMessage, open: open}
}

var conn = &Conn{Hostname: "mx.example.org", Addr: "192.0.2.1"}

func TestFirstFinalVerdictWins(t *testing.T) {
	var open atomic.Int64
	env, logs := testEnv()
	first := newFake("first", &open)
	first.body = func([]byte) (verdict.Verdict, error) {
		v := verdict.Rejectf(550, verdict.EnhSecurity, "VIRUS FOUND")
		v.Reason = "SIG"
		return v, nil
	}
	second := newFake("second", &open)
	p := New(env, Member{Filter: first}, Member{Filter: second})
	m, _ := p.Begin(conn, AllStages, "a@example.org", "")
	m.Rcpt("u@example.edu", "")
	if v := m.Body([]byte("x")); v.Action != verdict.Reject {
		t.Fatalf("body verdict %v", v)
	}
	m.Body([]byte("more"))
	v := m.End()
	m.Close()
	if v.Action != verdict.Reject || v.Filter != "first" || v.Reason != "SIG" {
		t.Fatalf("final verdict %+v", v)
	}
	if second.bodyCalls != 0 || first.bodyCalls != 1 {
		t.Errorf("filters called after the decision: first %d, second %d", first.bodyCalls, second.bodyCalls)
	}
	if open.Load() != 0 {
		t.Errorf("%d checks not closed", open.Load())
	}
	if n := strings.Count(logs.String(), "msg=decision"); n != 1 {
		t.Errorf("%d decision lines, want 1:\n%s", n, logs)
	}
	if sum := env.Stats.Take(); sum.Messages != 1 || sum.Hits["first:SIG"] != 1 {
		t.Errorf("summary %+v", sum)
	}
}

func TestErrorPolicies(t *testing.T) {
	cases := []struct {
		policy ErrorPolicy
		want   verdict.Action
		code   int
	}{
		{OnErrorTempFail, verdict.TempFail, 451},
		{OnErrorReject, verdict.Reject, 550},
		{OnErrorAccept, verdict.Continue, 0},
	}
	for _, c := range cases {
		for _, mode := range []string{"error", "panic", "start"} {
			t.Run(c.policy.String()+"/"+mode, func(t *testing.T) {
				var open atomic.Int64
				env, logs := testEnv()
				f := newFake("broken", &open)
				switch mode {
				case "error":
					f.body = func([]byte) (verdict.Verdict, error) { return verdict.Pass, errors.New("disk on fire: /secret/path") }
				case "panic":
					f.body = func([]byte) (verdict.Verdict, error) { panic("boom") }
				case "start":
					f.newErr = errors.New("cannot start")
				}
				p := New(env, Member{Filter: f, OnError: c.policy})
				m, _ := p.Begin(conn, AllStages, "a@example.org", "")
				m.Body([]byte("x"))
				v := m.End()
				m.Close()
				if v.Action != c.want {
					t.Fatalf("verdict %v, want %v", v.Action, c.want)
				}
				if code, _, text := v.Reply(); code != c.code || strings.Contains(text, "secret") || strings.Contains(text, "boom") {
					t.Errorf("reply %d %q: wrong code or internal detail leaked", code, text)
				}
				if mode == "panic" && !strings.Contains(logs.String(), "stack=") {
					t.Errorf("panic logged without a stack:\n%s", logs)
				}
				if open.Load() != 0 {
					t.Errorf("%d checks not closed", open.Load())
				}
			})
		}
	}
}

func TestRecipientVerdictsAreSeparate(t *testing.T) {
	var open atomic.Int64
	env, logs := testEnv()
	f := newFake("quota", &open)
	f.reads, f.decide = StageRcpt, StageRcpt
	f.rcpt = func(rcpt string) (verdict.Verdict, error) {
		if rcpt == "full@example.edu" {
			return verdict.Rejectf(552, verdict.EnhMailboxFull, "Mailbox full"), nil
		}
		return verdict.Pass, nil
	}
	p := New(env, Member{Filter: f})
	m, _ := p.Begin(conn, AllStages, "a@example.org", "")
	if v := m.Rcpt("full@example.edu", ""); v.Action != verdict.Reject {
		t.Fatalf("full mailbox: %v", v)
	}
	if v := m.Rcpt("ok@example.edu", ""); v.Final() {
		t.Fatalf("other recipient refused: %v", v)
	}
	if v := m.End(); v.Final() {
		t.Fatalf("message refused: %v", v)
	}
	m.Close()
	if got := m.Envelope().Rcpts; len(got) != 1 || got[0] != "ok@example.edu" {
		t.Errorf("recipients %v", got)
	}
	if !strings.Contains(logs.String(), "rcpt=full@example.edu") {
		t.Errorf("no log line for the refused recipient:\n%s", logs)
	}
}

func TestStagesUnion(t *testing.T) {
	var open atomic.Int64
	env, _ := testEnv()
	a := newFake("a", &open)
	b := newFake("b", &open)
	b.reads, b.decide = StageHeader, StageRcpt
	reads, decides := New(env, Member{Filter: a}, Member{Filter: b}).Stages()
	if reads != StageBody|StageEndOfMessage|StageHeader|StageRcpt || decides != StageEndOfMessage|StageRcpt {
		t.Errorf("reads %b decides %b", reads, decides)
	}
}

func TestParseErrorPolicy(t *testing.T) {
	for _, s := range []string{"tempfail", "accept", "reject", "TempFail"} {
		if _, err := ParseErrorPolicy(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	if _, err := ParseErrorPolicy("ignore"); err == nil {
		t.Error("ignore accepted")
	}
}

// A filter in monitor mode never refuses: what it would have done is
// logged, counted and recorded in an X-Mailguard header.
func TestMonitorMode(t *testing.T) {
	var open atomic.Int64
	env, logs := testEnv()
	f := newFake("virus", &open)
	f.reads, f.decide = StageBody|StageRcpt, StageEndOfMessage|StageRcpt
	f.body = func([]byte) (verdict.Verdict, error) {
		v := verdict.Rejectf(550, verdict.EnhSecurity, "VIRUS FOUND")
		v.Reason = "EICAR"
		return v, nil
	}
	f.rcpt = func(rcpt string) (verdict.Verdict, error) {
		if rcpt == "full@example.edu" {
			return verdict.Rejectf(552, verdict.EnhMailboxFull, "Mailbox full"), nil
		}
		return verdict.Pass, nil
	}
	p := New(env, Member{Filter: f, Mode: Monitor})
	if p.Modifies()&ModAddHeader == 0 {
		t.Fatal("monitor mode does not ask to add headers")
	}
	m, _ := p.Begin(conn, AllStages, "a@example.org", "")
	if v := m.Rcpt("full@example.edu", ""); v.Final() {
		t.Fatalf("monitor mode refused a recipient: %v", v)
	}
	m.Body([]byte("x"))
	if v := m.End(); v.Final() {
		t.Fatalf("monitor mode refused the message: %v", v)
	}
	env2 := m.Envelope()
	m.Close()
	var headers []string
	for _, h := range env2.Headers() {
		headers = append(headers, h.Name+": "+h.Value)
	}
	want := []string{
		"X-Mailguard: monitor; filter=virus; would reject 552 5.2.2 Mailbox full; rcpt=<full@example.edu>",
		"X-Mailguard: monitor; filter=virus; would reject 550 5.7.0 VIRUS FOUND; reason=EICAR",
	}
	if strings.Join(headers, "\n") != strings.Join(want, "\n") {
		t.Errorf("headers:\n%s\nwant:\n%s", strings.Join(headers, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(logs.String(), `mode=monitor verdict="would reject 550 5.7.0 VIRUS FOUND" reason=EICAR`) {
		t.Errorf("log:\n%s", logs)
	}
	if hits := env.Stats.Take().Hits; hits["virus:would reject"] != 2 || hits["virus:EICAR"] != 0 {
		t.Errorf("counters %v", hits)
	}
	// Enforced, the same filter refuses.
	p = New(env, Member{Filter: f})
	m, _ = p.Begin(conn, AllStages, "a@example.org", "")
	m.Body([]byte("x"))
	if v := m.End(); v.Action != verdict.Reject {
		t.Fatalf("enforce: %v", v)
	}
	m.Close()
}

// A monitor-mode filter that decides during the body keeps answering the
// same at every later chunk and at the end of the message (the attachment
// filter does): it is recorded once, with or without a filter beside it,
// and not called again, as it would not be if it enforced.
func TestMonitorRecordsOnce(t *testing.T) {
	for _, withOther := range []bool{false, true} {
		t.Run(fmt.Sprintf("other filter %v", withOther), func(t *testing.T) {
			var open atomic.Int64
			env, logs := testEnv()
			refuse := func() (verdict.Verdict, error) {
				v := verdict.Rejectf(550, verdict.EnhSecurity, "Attachment refused: setup.exe")
				v.Reason = "name matches *.exe"
				return v, nil
			}
			f := newFake("attachments", &open)
			f.body = func([]byte) (verdict.Verdict, error) { return refuse() }
			f.eom = func(*Envelope) (verdict.Verdict, error) { return refuse() }
			var members []Member
			if withOther {
				members = append(members, Member{Filter: newFake("senders", &open)})
			}
			p := New(env, append(members, Member{Filter: f, Mode: Monitor})...)
			m, _ := p.Begin(conn, AllStages, "a@example.org", "")
			m.Rcpt("u@example.edu", "")
			for _, chunk := range []string{"part 1", "part 2", "part 3"} {
				if v := m.Body([]byte(chunk)); v.Final() {
					t.Fatalf("monitor mode refused at the body: %v", v)
				}
			}
			if v := m.End(); v.Final() {
				t.Fatalf("monitor mode refused the message: %v", v)
			}
			headers := m.Envelope().Headers()
			m.Close()
			if len(headers) != 1 || headers[0].Name != MonitorHeader {
				t.Errorf("header changes %+v, want one X-Mailguard", headers)
			}
			if n := strings.Count(logs.String(), "mode=monitor"); n != 1 {
				t.Errorf("%d monitor decision lines, want 1:\n%s", n, logs)
			}
			if hits := env.Stats.Take().Hits; hits["attachments:would reject"] != 1 {
				t.Errorf("counted %d times, want once: %v", hits["attachments:would reject"], hits)
			}
			if f.bodyCalls != 1 || f.eomCalls != 0 {
				t.Errorf("called after its decision: %d body calls, %d at the end", f.bodyCalls, f.eomCalls)
			}
			if open.Load() != 0 {
				t.Errorf("%d checks not closed", open.Load())
			}
		})
	}
}

// connFilter keeps state per connection and judges HELO.
type connFilter struct {
	fakeFilter
	states atomic.Int64
}

type connState struct {
	NopConnState
	f        *connFilter
	messages int
}

func (f *connFilter) NewConnState(context.Context, *Conn) (ConnState, error) {
	f.states.Add(1)
	return &connState{f: f}, nil
}

func (s *connState) Helo(_ context.Context, c *Conn) (verdict.Verdict, error) {
	if c.Helo == "bad.example" {
		return verdict.Rejectf(550, verdict.EnhDeliveryNotAuthorized, "go away"), nil
	}
	return verdict.Pass, nil
}

func (s *connState) Close() { s.f.states.Add(-1) }

type countingCheck struct {
	NopCheck
	state *connState
}

func (c countingCheck) Close() {}

// Connection state lives across messages, is reachable from each check,
// and is always closed; connection stages run for a filter that decides
// them.
func TestConnectionState(t *testing.T) {
	var open atomic.Int64
	env, _ := testEnv()
	f := &connFilter{fakeFilter: fakeFilter{name: "conn", decide: StageHelo, open: &open}}
	var seen []*connState
	check := &checkMaker{f: f, seen: &seen}
	p := New(env, Member{Filter: check})
	c := &Conn{Addr: "192.0.2.1", Helo: "good.example"}
	cn := p.Open(context.Background(), c)
	if v := cn.Helo(); v.Final() {
		t.Fatal(v)
	}
	for i := 0; i < 3; i++ {
		m, _ := cn.Begin(AllStages, AllModifications, "a@example.org", "")
		m.End()
		m.Close()
	}
	if len(seen) != 3 || seen[0] == nil || seen[0] != seen[2] || seen[0].messages != 3 {
		t.Fatalf("checks did not share one connection state: %v", seen)
	}
	cn.Close()
	if f.states.Load() != 0 {
		t.Fatal("connection state not closed")
	}
	cn = p.Open(context.Background(), &Conn{Helo: "bad.example"})
	if v := cn.Helo(); v.Action != verdict.Reject {
		t.Fatalf("HELO verdict %v", v)
	}
	// A message on a refused connection carries the refusal.
	m, v := cn.Begin(AllStages, AllModifications, "a@example.org", "")
	if v.Action != verdict.Reject {
		t.Fatalf("message on a refused connection: %v", v)
	}
	m.Close()
	cn.Close()
	if f.states.Load() != 0 {
		t.Fatal("connection state not closed")
	}
}

// checkMaker is connFilter with checks that find their connection state.
type checkMaker struct {
	*connFilter
	f    *connFilter
	seen *[]*connState
}

func (c *checkMaker) Name() string { return "conn" }
func (c *checkMaker) Stages() (reads, decides Stage) {
	return StageMail, StageHelo
}
func (c *checkMaker) NewConnState(ctx context.Context, cn *Conn) (ConnState, error) {
	return c.f.NewConnState(ctx, cn)
}
func (c *checkMaker) NewCheck(_ context.Context, env *Envelope) (Check, error) {
	st, _ := env.ConnState(c).(*connState)
	if st != nil {
		st.messages++
	}
	*c.seen = append(*c.seen, st)
	return countingCheck{state: st}, nil
}

// A filter call that outlives its timeout gets a context that ends; an
// unused context costs no timer.
func TestCallContext(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	c := newLazyCtx(parent, time.Now().Add(50*time.Millisecond))
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("deadline did not end the context")
	}
	if !errors.Is(c.Err(), context.DeadlineExceeded) || !c.timedOut() {
		t.Fatalf("err %v", c.Err())
	}
	c = newLazyCtx(parent, time.Now().Add(time.Hour))
	derived, stop := context.WithTimeout(c, time.Hour)
	defer stop()
	cancel()
	select {
	case <-derived.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("parent's cancel did not reach a derived context")
	}
	if c.timedOut() {
		t.Fatal("a cancel counted as a timeout")
	}
	lazy := newLazyCtx(context.Background(), time.Now().Add(time.Millisecond))
	time.Sleep(5 * time.Millisecond)
	if !errors.Is(lazy.Err(), context.DeadlineExceeded) {
		t.Fatal("Err without Done missed the deadline")
	}
}

func BenchmarkCallContext(b *testing.B) {
	parent := newLazyCtx(context.Background(), time.Time{})
	b.Run("lazy", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			c := newLazyCtx(parent, time.Now().Add(10*time.Second))
			c.cancel(context.Canceled)
		}
	})
	b.Run("WithTimeout", func(b *testing.B) {
		b.ReportAllocs()
		bg, stop := context.WithCancel(context.Background())
		defer stop()
		for i := 0; i < b.N; i++ {
			_, cancel := context.WithTimeout(bg, 10*time.Second)
			cancel()
		}
	})
}

// A message's recipients and addresses are bounded, and so are the log
// lines that name them.
func TestRecipientLimits(t *testing.T) {
	env, logs := testEnv()
	env.MaxRecipients = 12
	var open atomic.Int64
	p := New(env, Member{Filter: newFake("f", &open)})
	hostile := &Conn{Hostname: strings.Repeat("h", 1<<20), Addr: "192.0.2.1"}
	m, _ := p.Begin(hostile, AllStages, "a@example.org", "")
	for i := 0; i < 12; i++ {
		if v := m.Rcpt(fmt.Sprintf("u%d@example.edu", i), ""); v.Final() {
			t.Fatalf("recipient %d refused: %v", i, v)
		}
	}
	for i := 12; i < 1000; i++ {
		if v := m.Rcpt(fmt.Sprintf("u%d@example.edu", i), ""); v.String() != "tempfail 452 4.5.3 Too many recipients" {
			t.Fatalf("recipient %d: %v", i+1, v)
		}
	}
	long := strings.Repeat("x", 300) + "@example.edu"
	if v := m.Rcpt(long, ""); v.String() != "reject 501 5.1.3 Recipient address too long" {
		t.Fatalf("long recipient: %v", v)
	}
	m.Close()
	for _, line := range strings.Split(logs.String(), "\n") {
		if len(line) > 4096 {
			t.Fatalf("a log line of %d bytes", len(line))
		}
	}
	if n := strings.Count(logs.String(), "Too many recipients"); n != 2 || !strings.Contains(logs.String(), "987 more recipients over 12") {
		t.Errorf("%d lines for 988 recipients over the limit:\n%.3000s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "and 2 more") || !strings.Contains(logs.String(), "...(1048576 bytes)") {
		t.Errorf("log does not bound recipients and fields:\n%.2000s", logs.String())
	}
	m, v := p.Begin(conn, AllStages, long, "")
	if v.String() != "reject 501 5.1.7 Sender address too long" {
		t.Fatalf("long sender: %v", v)
	}
	m.Close()
}

// At debug level an accepted message is logged; at info it is not.
func TestDebugLogsAccepted(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		var logs bytes.Buffer
		env := Env{Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: level})), Now: time.Now}
		var open atomic.Int64
		p := New(env, Member{Filter: newFake("f", &open)})
		m, _ := p.Begin(conn, AllStages, "a@example.org", "")
		m.Rcpt("u@example.edu", "")
		m.End()
		m.Close()
		logged := strings.Contains(logs.String(), "msg=decision verdict=accept mail.from=a@example.org")
		if logged != (level == slog.LevelDebug) {
			t.Errorf("level %v: accepted message logged %v:\n%s", level, logged, logs.String())
		}
	}
}

// changeFilter asks for header changes at the end of the message.
func changeFilter(open *atomic.Int64, change func(env *Envelope)) *fakeFilter {
	f := newFake("changer", open)
	f.reads = StageHeader | StageEndOfMessage
	f.eom = func(env *Envelope) (verdict.Verdict, error) {
		change(env)
		return verdict.Pass, nil
	}
	return f
}

// deliver runs a message with header fields through p and returns its
// envelope once delivered.
func deliver(t *testing.T, p *Pipeline, fields int) *Envelope {
	t.Helper()
	m, _ := p.Begin(conn, AllStages, "a@example.org", "")
	defer m.Close()
	m.Rcpt("u@example.edu", "")
	for range fields {
		m.Header("X-Virus-Status", "Clean")
	}
	m.EndOfHeaders()
	if v := m.End(); v.Final() {
		t.Fatalf("refused: %v", v)
	}
	return m.Envelope()
}

func countOps(env *Envelope) (deletions, others int) {
	for _, h := range env.Headers() {
		if h.Op == HeaderReplace && h.Value == "" {
			deletions++
		} else {
			others++
		}
	}
	return deletions, others
}

// A message gains at most maxHeaderAdditions fields; the rest are
// dropped, logged and counted.
func TestHeaderAdditionsBounded(t *testing.T) {
	var open atomic.Int64
	env, logs := testEnv()
	p := New(env, Member{Filter: changeFilter(&open, func(env *Envelope) {
		for i := range 70 {
			env.AddHeader("X-Added", fmt.Sprint(i))
		}
	})})
	if _, added := countOps(deliver(t, p, 0)); added != maxHeaderAdditions {
		t.Errorf("%d fields added, want %d", added, maxHeaderAdditions)
	}
	if !strings.Contains(logs.String(), `level=WARN msg="header changes dropped" filter=changer reason="over 64 header fields added" count=6 header=X-Added`) {
		t.Errorf("no warning for the dropped changes:\n%s", logs)
	}
	if n := env.Stats.Take().Hits["changer:header change dropped"]; n != 6 {
		t.Errorf("counted %d dropped changes, want 6", n)
	}
}

// Deleting every field a message came with is not bounded by the
// additions' budget (70 forged fields to remove, then a status of our
// own), only by the message's own field count.
func TestHeaderDeletionsBoundedByTheMessage(t *testing.T) {
	var open atomic.Int64
	env, logs := testEnv()
	p := New(env, Member{Filter: changeFilter(&open, func(env *Envelope) {
		for i := 71; i >= 1; i-- { // one more than the message has
			env.ChangeHeader("X-Virus-Status", i, "")
		}
		env.AddHeader("X-Virus-Status", "Clean")
	})})
	deleted, added := countOps(deliver(t, p, 70))
	if deleted != 70 || added != 1 {
		t.Errorf("%d deletions and %d additions, want 70 and 1", deleted, added)
	}
	if !strings.Contains(logs.String(), `msg="header changes dropped" filter=changer reason="more deletions than the 70 header fields the message came with" count=1`) {
		t.Errorf("no warning for the dropped deletion:\n%s", logs)
	}
	if n := env.Stats.Take().Hits["changer:header change dropped"]; n != 1 {
		t.Errorf("counted %d dropped changes, want 1", n)
	}
}

// A header value is one line of at most maxHeaderValue bytes; an invalid
// name or index is dropped and said.
func TestHeaderValuesBounded(t *testing.T) {
	var open atomic.Int64
	env, logs := testEnv()
	p := New(env, Member{Filter: changeFilter(&open, func(env *Envelope) {
		env.AddHeader("X-Long", strings.Repeat("v", 5000))
		env.AddHeader("X-Lines", "a\r\nX-Injected: yes\x00")
		env.AddHeader("Bad Name", "x")
		env.ChangeHeader("Subject", 0, "x")
	})})
	e := deliver(t, p, 1)
	if len(e.Headers()) != 2 {
		t.Fatalf("%d changes, want 2", len(e.Headers()))
	}
	if n := len(e.Headers()[0].Value); n != maxHeaderValue {
		t.Errorf("a value of %d bytes, want %d", n, maxHeaderValue)
	}
	if v := e.Headers()[1].Value; v != "a  X-Injected: yes " {
		t.Errorf("value %q kept its line breaks", v)
	}
	for _, want := range []string{`reason="invalid header name" count=1 header="Bad Name"`, `reason="invalid header index" count=1 header=Subject`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
}

// A message keeps at most maxMonitorHits monitor records (and
// X-Mailguard headers); the rest are logged and counted as dropped.
func TestMonitorRecordsBounded(t *testing.T) {
	var open atomic.Int64
	env, logs := testEnv()
	f := newFake("quota", &open)
	f.reads, f.decide = StageRcpt, StageRcpt
	f.rcpt = func(string) (verdict.Verdict, error) {
		return verdict.Rejectf(552, verdict.EnhMailboxFull, "Mailbox full"), nil
	}
	p := New(env, Member{Filter: f, Mode: Monitor})
	m, _ := p.Begin(conn, AllStages, "a@example.org", "")
	for i := range 20 {
		m.Rcpt(fmt.Sprintf("u%d@example.edu", i), "")
	}
	if v := m.End(); v.Final() {
		t.Fatalf("refused: %v", v)
	}
	e := m.Envelope()
	m.Close()
	if len(e.Monitored()) != maxMonitorHits || len(e.Headers()) != maxMonitorHits {
		t.Errorf("%d records and %d headers, want %d", len(e.Monitored()), len(e.Headers()), maxMonitorHits)
	}
	if !strings.Contains(logs.String(), `msg="monitor records dropped" filter=quota reason="over 16 monitor records" count=4`) {
		t.Errorf("no warning for the dropped records:\n%s", logs)
	}
	if hits := env.Stats.Take().Hits; hits["quota:monitor record dropped"] != 4 || hits["quota:would reject"] != 16 {
		t.Errorf("counters %v", hits)
	}
}

// What a caller reads of the envelope's changes is a copy: writing to it
// cannot slip a value past the sanitizer into what the MTA is sent.
func TestHeadersReadOnly(t *testing.T) {
	var open atomic.Int64
	env, _ := testEnv()
	p := New(env, Member{Filter: changeFilter(&open, func(env *Envelope) {
		env.AddHeader("X-Scanned", "yes")
		env.Headers()[0].Value = "yes\r\nX-Injected: 1"
	})})
	if got := deliver(t, p, 0).Headers(); len(got) != 1 || got[0].Value != "yes" {
		t.Fatalf("changes %+v", got)
	}
}
