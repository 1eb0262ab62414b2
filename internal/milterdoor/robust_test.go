package milterdoor_test

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/filter/virus"
	"mailguard/internal/pipeline"
	"mailguard/internal/sigfile"
	"mailguard/internal/stats"
)

func packet(cmd byte, data string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(data)+1))
	return append(append(b, cmd), data...)
}

func negotiation() []byte {
	d := make([]byte, 12)
	binary.BigEndian.PutUint32(d[0:], 6)
	binary.BigEndian.PutUint32(d[4:], 0x1ff)
	binary.BigEndian.PutUint32(d[8:], 0x1fffff)
	return packet('O', string(d))
}

// TestMalformedPackets sends broken input after a good negotiation: the
// door closes that connection at once, without waiting for the client to
// hang up (Postfix then applies its default action), says why in the log,
// and goes on serving others.
func TestMalformedPackets(t *testing.T) {
	cases := []struct {
		name string
		bad  []byte
		log  string
	}{
		{"zero length", []byte{0, 0, 0, 0}, "milter packet of length 0"},
		{"huge length", []byte{0x7f, 0xff, 0xff, 0xff, 'B'}, "milter packet too large: 2147483647 bytes"},
		{"over the packet bound", append(binary.BigEndian.AppendUint32(nil, 300<<10), 'L'), "milter packet too large: 307200 bytes"},
		{"unknown command", packet('Z', "x"), `unknown milter command 'Z'`},
		{"bad address family", packet('C', "host\x00Xjunk"), `unknown address family 'X'`},
		{"short connect", packet('C', "host\x004\x01"), "connect packet too short for a port"},
		{"connect no family", packet('C', "host"), "connect packet without address family"},
		{"mail without sender", packet('M', ""), "MAIL without a sender"},
		{"repeated negotiation", negotiation(), "option negotiation repeated"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			td := startDoor(t, "WORM_SOBIG.B =\n"+sobig+"\n")
			conn, err := net.Dial("tcp", td.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.Write(negotiation())
			reply := make([]byte, 17)
			if _, err := io.ReadFull(conn, reply); err != nil {
				t.Fatalf("negotiation reply: %v", err)
			}
			conn.Write(c.bad)
			if !closedWithin(conn, 3*time.Second) {
				t.Fatal("the door did not close the connection")
			}
			if logs := td.log(); !strings.Contains(logs, c.log) {
				t.Fatalf("log does not say %q:\n%s", c.log, logs)
			}
			s := newSession(t, td)
			connect(t, s)
			assertReject(t, sendMessage(t, s, []byte(sobig), 65535))
			if strings.Contains(td.log(), "panicked") {
				t.Fatalf("a session panicked:\n%s", td.log())
			}
		})
	}
	// A packet cut short can only end with the stream.
	td := startDoor(t, "WORM_SOBIG.B =\n"+sobig+"\n")
	conn, _ := net.Dial("tcp", td.addr)
	defer conn.Close()
	conn.Write(negotiation())
	io.ReadFull(conn, make([]byte, 17))
	conn.Write(append(binary.BigEndian.AppendUint32(nil, 100), 'B', 'x'))
	conn.(*net.TCPConn).CloseWrite()
	if !closedWithin(conn, 3*time.Second) {
		t.Fatal("a truncated packet left the connection open")
	}
}

// A flood of bad connections costs one warning a minute, with a count.
func TestProtocolErrorsLogRateLimited(t *testing.T) {
	td := startDoor(t, "WORM_SOBIG.B =\n"+sobig+"\n")
	for i := 0; i < 50; i++ {
		conn, err := net.Dial("tcp", td.addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(negotiation())
		io.ReadFull(conn, make([]byte, 17))
		conn.Write(packet('Z', "x"))
		closedWithin(conn, 3*time.Second)
		conn.Close()
	}
	if n := strings.Count(td.log(), "milter protocol error"); n != 1 {
		t.Fatalf("%d warnings for 50 bad connections:\n%s", n, td.log())
	}
}

// TestOldMTAWithoutNoReplyFlags: an MTA that speaks protocol version 2
// offers no no-reply flags; the door must then answer every stage.
func TestOldMTAWithoutNoReplyFlags(t *testing.T) {
	td := startDoor(t, "WORM_SOBIG.B =\n"+sobig+"\n")
	c := milter.NewClient("tcp", td.addr, milter.WithMaximumVersion(2), milter.WithActions(0),
		milter.WithProtocols(milter.OptNoConnect|milter.OptNoHelo|milter.OptNoMailFrom|milter.OptNoRcptTo|milter.OptNoBody|milter.OptNoHeaders|milter.OptNoEOH))
	s, err := c.Session(milter.NewMacroBag())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	connect(t, s)
	assertAccept(t, sendMessage(t, s, filler(100000), 65535))
	assertReject(t, sendMessage(t, s, append(filler(100000), sobig...), 65535))
}

// TestReloadMidMessage: a message keeps the signatures it started with, and
// so does the rest of its SMTP session (a connection stays on the pipeline
// that opened it); the next SMTP session gets the new ones.
func TestReloadMidMessage(t *testing.T) {
	td := startDoor(t, "OLD_SIG =\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n")
	s := newSession(t, td)
	connect(t, s)
	startBody(t, s, "a@example.org")
	if _, err := s.BodyChunk(filler(1000)); err != nil {
		t.Fatal(err)
	}
	// MAIL needs no reply, so wait until the door has begun the message.
	waitFor(t, func() bool { return td.stats.Pending() == 1 })
	td.door.SetPipeline(pipelineFor(t, "NEW_SIG =\n"+sobig+"\n", discardLog(), stats.NewCounter()))
	if _, err := s.BodyChunk([]byte(sobig)); err != nil {
		t.Fatal(err)
	}
	_, act, err := s.End()
	if err != nil {
		t.Fatal(err)
	}
	if act.Type != milter.ActionAccept {
		t.Fatalf("got %+v, want accept: the old set does not know NEW_SIG\n%s", act, td.logs)
	}
	assertAccept(t, sendMessage(t, s, []byte(sobig), 65535))
	next := newSession(t, td)
	connect(t, next)
	assertReject(t, sendMessage(t, next, []byte(sobig), 65535))
}

func pipelineFor(t *testing.T, sigs string, log *slog.Logger, counter *stats.Counter) *pipeline.Pipeline {
	t.Helper()
	parsed, err := sigfile.Parse("test", strings.NewReader(sigs))
	if err != nil {
		t.Fatal(err)
	}
	f, err := virus.New(parsed, virus.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return pipeline.New(pipeline.Env{Log: log, Stats: counter, Now: time.Now}, pipeline.Member{Filter: f})
}

// TestShutdownDrains: an idle connection is closed at once; one with a
// message in flight may finish it.
func TestShutdownDrains(t *testing.T) {
	td := startDoor(t, "WORM_SOBIG.B =\n"+sobig+"\n")
	idle := newSession(t, td)
	connect(t, idle)
	busy := newSession(t, td)
	connect(t, busy)
	startBody(t, busy, "a@example.org")
	busy.BodyChunk(filler(1000))
	waitFor(t, func() bool { return td.door.Active() == 2 && td.stats.Pending() == 1 })

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- td.door.Shutdown(ctx)
	}()
	waitFor(t, func() bool { return td.door.Active() == 1 })
	if _, err := busy.BodyChunk([]byte(sobig)); err != nil {
		t.Fatal(err)
	}
	_, act, err := busy.End()
	if err != nil {
		t.Fatalf("in-flight message cut off by shutdown: %v", err)
	}
	assertReject(t, act)
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if n := td.door.Active(); n != 0 {
		t.Fatalf("%d connections open after shutdown", n)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
