package milterdoor_test

import (
	"bytes"
	"context"
	"encoding/binary"
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
	"mailguard/internal/stats"
)

const sobig = "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3"

// countingListener counts the packets the door writes back to the MTA.
type countingListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, writes: l.writes}, nil
}

// countingConn parses the door's output into packets and counts them.
type countingConn struct {
	net.Conn
	writes  *atomic.Int64
	pending []byte
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.pending = append(c.pending, p...)
	for len(c.pending) >= 4 {
		n := 4 + int(binary.BigEndian.Uint32(c.pending))
		if len(c.pending) < n {
			break
		}
		c.writes.Add(1)
		c.pending = c.pending[n:]
	}
	return c.Conn.Write(p)
}

type testDoor struct {
	addr   string
	writes atomic.Int64
	stats  *stats.Counter
	logs   *bytes.Buffer
	lw     *lockedWriter
	door   *milterdoor.Door
}

func startDoor(t *testing.T, sigs string) *testDoor {
	t.Helper()
	td := &testDoor{stats: stats.NewCounter(), logs: &bytes.Buffer{}}
	td.lw = &lockedWriter{w: td.logs}
	log := slog.New(slog.NewTextHandler(td.lw, nil))
	td.door = milterdoor.New(pipelineFor(t, sigs, log, td.stats), log, milterdoor.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	td.addr = ln.Addr().String()
	go td.door.Serve(countingListener{ln, &td.writes})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		td.door.Shutdown(ctx)
	})
	return td
}

// lockedWriter lets sessions log concurrently into one buffer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func newSession(t *testing.T, td *testDoor) *milter.ClientSession {
	t.Helper()
	c := milter.NewClient("tcp", td.addr)
	s, err := c.Session(milter.NewMacroBag())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// sendMessage runs one transaction and returns the final action.
func sendMessage(t *testing.T, s *milter.ClientSession, body []byte, chunk int) *milter.Action {
	t.Helper()
	steps := []func() (*milter.Action, error){
		func() (*milter.Action, error) { return s.Mail("sender@example.org", "") },
		func() (*milter.Action, error) { return s.Rcpt("user@example.edu", "") },
		func() (*milter.Action, error) { return s.DataStart() },
		func() (*milter.Action, error) { return s.HeaderField("Subject", "hello", nil) },
		func() (*milter.Action, error) { return s.HeaderEnd() },
	}
	for _, step := range steps {
		act, err := step()
		if err != nil {
			t.Fatal(err)
		}
		if act.Type != milter.ActionContinue {
			t.Fatalf("unexpected early action %+v", act)
		}
	}
	for i := 0; i < len(body); i += chunk {
		if _, err := s.BodyChunk(body[i:min(i+chunk, len(body))]); err != nil {
			t.Fatal(err)
		}
	}
	_, act, err := s.End()
	if err != nil {
		t.Fatal(err)
	}
	return act
}

// startBody runs MAIL, RCPT, DATA and the end of headers.
func startBody(t *testing.T, s *milter.ClientSession, from string) {
	t.Helper()
	for _, step := range []func() (*milter.Action, error){
		func() (*milter.Action, error) { return s.Mail(from, "") },
		func() (*milter.Action, error) { return s.Rcpt("user@example.edu", "") },
		func() (*milter.Action, error) { return s.DataStart() },
		func() (*milter.Action, error) { return s.HeaderEnd() },
	} {
		if _, err := step(); err != nil {
			t.Fatal(err)
		}
	}
}

func connect(t *testing.T, s *milter.ClientSession) {
	t.Helper()
	if _, err := s.Conn("mx.example.org", milter.FamilyInet, 25, "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Helo("mx.example.org"); err != nil {
		t.Fatal(err)
	}
}

func filler(n int) []byte {
	line := "R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=ABCDEFGHIJKLMNOPQRSTUVWXYZab\r\n"
	return bytes.Repeat([]byte(line), n/len(line)+1)[:n]
}

func assertReject(t *testing.T, act *milter.Action) {
	t.Helper()
	if act.Type != milter.ActionRejectWithCode || act.SMTPCode != 550 || !strings.HasPrefix(act.SMTPReply, "550 5.7.0 VIRUS FOUND") {
		t.Fatalf("got %+v, want 550 5.7.0 VIRUS FOUND", act)
	}
}

func assertAccept(t *testing.T, act *milter.Action) {
	t.Helper()
	if act.Type != milter.ActionAccept && act.Type != milter.ActionContinue {
		t.Fatalf("got %+v, want accept", act)
	}
}

func TestCleanAndInfected(t *testing.T) {
	td := startDoor(t, "WORM_SOBIG.B =\n"+sobig+"\n")
	cases := []struct {
		name     string
		body     []byte
		infected bool
	}{
		{"clean", filler(200000), false},
		{"mid body", append(append(filler(100000), sobig...), filler(50000)...), true},
		{"across chunk boundary", append(append(filler(65535-30), sobig...), filler(1000)...), true},
		{"after NUL bytes", append(append([]byte("\x00\x00\x00\r\n"), filler(1000)...), append([]byte{0}, sobig...)...), true},
		{"at the very end", append(filler(70000), sobig...), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSession(t, td)
			connect(t, s)
			act := sendMessage(t, s, c.body, 65535)
			if c.infected {
				assertReject(t, act)
			} else {
				assertAccept(t, act)
			}
		})
	}
	if !strings.Contains(td.logs.String(), "reason=WORM_SOBIG.B") || !strings.Contains(td.logs.String(), "mail.client=192.0.2.1") {
		t.Errorf("rejection log line lacks reason or client:\n%s", td.logs)
	}
}

func TestSeveralMessagesOneConnection(t *testing.T) {
	td := startDoor(t, "WORM_SOBIG.B =\n"+sobig+"\n")
	s := newSession(t, td)
	connect(t, s)
	before := td.writes.Load() // the option negotiation
	for i := 0; i < 6; i++ {
		if i%2 == 0 {
			assertAccept(t, sendMessage(t, s, filler(150000), 65535))
		} else {
			assertReject(t, sendMessage(t, s, append(filler(150000), sobig...), 65535))
		}
	}
	// One reply per message (end of message): every other stage was
	// negotiated as no-reply.
	if got := td.writes.Load() - before; got != 6 {
		t.Errorf("door wrote %d packets for 6 messages, want 6", got)
	}
	if sum := td.stats.Take(); sum.Messages != 6 || sum.Hits["virus:WORM_SOBIG.B"] != 3 {
		t.Errorf("summary = %+v, want 6 messages and 3 hits", sum)
	}
}

func TestNegotiatesNoReplies(t *testing.T) {
	td := startDoor(t, "WORM_SOBIG.B =\n"+sobig+"\n")
	s := newSession(t, td)
	for _, opt := range []milter.OptProtocol{milter.OptNoBodyReply, milter.OptNoRcptReply, milter.OptNoMailReply, milter.OptNoConnReply, milter.OptNoHeaders, milter.OptNoEOH, milter.OptNoHelo} {
		if !s.ProtocolOption(opt) {
			t.Errorf("protocol option %v not negotiated", opt)
		}
	}
	if s.ProtocolOption(milter.OptNoBody) {
		t.Error("body skipped although the virus filter reads it")
	}
}

func TestAbortMidMessage(t *testing.T) {
	td := startDoor(t, "WORM_SOBIG.B =\n"+sobig+"\n")
	s := newSession(t, td)
	connect(t, s)
	startBody(t, s, "a@example.org")
	// The first half of a signature, then abort: the next message must
	// start from a clean scanner, not complete the old match.
	if _, err := s.BodyChunk([]byte(sobig[:40])); err != nil {
		t.Fatal(err)
	}
	if err := s.Abort(nil); err != nil {
		t.Fatal(err)
	}
	startBody(t, s, "b@example.org")
	if _, err := s.BodyChunk([]byte(sobig[40:])); err != nil {
		t.Fatal(err)
	}
	_, act, err := s.End()
	if err != nil {
		t.Fatal(err)
	}
	assertAccept(t, act)
	assertReject(t, sendMessage(t, s, []byte(sobig), 65535))
}

func TestDisconnectMidBody(t *testing.T) {
	td := startDoor(t, "WORM_SOBIG.B =\n"+sobig+"\n")
	for i := 0; i < 20; i++ {
		s := newSession(t, td)
		connect(t, s)
		startBody(t, s, "a@example.org")
		s.BodyChunk(filler(65535))
		s.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for td.door.Active() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := td.door.Active(); n != 0 {
		t.Fatalf("%d sessions still open after the MTA went away", n)
	}
	// The door still serves.
	s := newSession(t, td)
	connect(t, s)
	assertReject(t, sendMessage(t, s, []byte(sobig), 65535))
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
