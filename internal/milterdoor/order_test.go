package milterdoor_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/milterdoor"
	"mailguard/internal/pipeline"
	"mailguard/internal/verdict"
)

// eohFilter reads the end of the headers and counts its calls and its
// open checks; block makes the end of headers wait for its context, as a
// filter waiting for a clamd slot does.
type eohFilter struct {
	pipeline.NopCheck
	eoh, open atomic.Int64
	block     bool
	cancelled chan error
}

func (f *eohFilter) Name() string { return "eoh" }
func (f *eohFilter) Stages() (reads, decides pipeline.Stage) {
	return pipeline.StageHeader | pipeline.StageEndOfHeaders | pipeline.StageBody, pipeline.StageEndOfMessage
}
func (f *eohFilter) NewCheck(context.Context, *pipeline.Envelope) (pipeline.Check, error) {
	f.open.Add(1)
	return &eohCheck{f: f}, nil
}

type eohCheck struct {
	pipeline.NopCheck
	f *eohFilter
}

func (c *eohCheck) EndOfHeaders(ctx context.Context, _ *pipeline.Envelope) (verdict.Verdict, error) {
	c.f.eoh.Add(1)
	if c.f.block {
		select {
		case <-ctx.Done():
			c.f.cancelled <- ctx.Err()
		case <-time.After(20 * time.Second):
			c.f.cancelled <- errors.New("never cancelled")
		}
		return verdict.Pass, ctx.Err()
	}
	return verdict.Pass, nil
}
func (c *eohCheck) Close() { c.f.open.Add(-1) }

// A stage comes once per message, in the MTA's order. A peer that sends
// the end of the headers twice (or a command of a stage already past) is
// no MTA: the connection is closed at once, the filters ran each stage
// once and their checks are closed, and others are served.
func TestOutOfOrderCommandsCloseTheConnection(t *testing.T) {
	envelope := []struct {
		cmd  byte
		data string
	}{{'C', "mx.example.org\x004\x00\x19192.0.2.1\x00"}, {'M', "<a@example.org>\x00"}, {'R', "<u@example.edu>\x00"}}
	cases := []struct {
		name   string
		before string // commands after the envelope, answered
		bad    byte
		eoh    int64
	}{
		{"end of headers twice", "LN", 'N', 1},
		{"end of headers after the body", "LNB", 'N', 1},
		{"a header field after the end of headers", "LN", 'L', 1},
		{"a header field after the body", "NB", 'L', 1},
		{"RCPT after DATA", "T", 'R', 0},
		{"RCPT after the header fields", "L", 'R', 0},
		{"DATA after the body", "TNB", 'T', 1},
	}
	data := map[byte]string{'L': "Subject\x00hi\x00", 'N': "", 'B': "hello\r\n", 'T': "", 'R': "<v@example.edu>\x00"}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := &eohFilter{}
			td := startDoorWith(t, milterdoor.Options{}, pipeline.Member{Filter: f})
			r := dialRaw(t, td.addr)
			r.read()
			for _, p := range envelope {
				r.send(p.cmd, p.data)
				r.read()
			}
			for _, cmd := range []byte(c.before) {
				r.send(cmd, data[cmd])
				if code, _ := r.read(); code != 'c' {
					t.Fatalf("answer to %q: %q", cmd, code)
				}
			}
			r.send(c.bad, data[c.bad])
			if !closedWithin(r.c, 3*time.Second) {
				t.Fatalf("%q out of order left the connection open", c.bad)
			}
			if logs := td.log(); !strings.Contains(logs, "milter protocol error") || !strings.Contains(logs, "after the message's") {
				t.Errorf("not logged:\n%s", logs)
			}
			waitFor(t, func() bool { return td.door.Active() == 0 })
			if n, open := f.eoh.Load(), f.open.Load(); n != c.eoh || open != 0 {
				t.Errorf("end of headers ran %d times (want %d), %d checks left open", n, c.eoh, open)
			}
			// The same commands in order, on a new connection, are served;
			// a second message after the end of the first starts afresh.
			r = dialRaw(t, td.addr)
			r.read()
			for i := 0; i < 2; i++ {
				for _, p := range envelope[i:] {
					r.send(p.cmd, p.data)
					r.read()
				}
				for _, cmd := range "TLNB" {
					r.send(byte(cmd), data[byte(cmd)])
					if code, _ := r.read(); code != 'c' {
						t.Fatalf("message %d: answer to %q: %q", i+1, cmd, code)
					}
				}
				r.send('E')
				if code, _ := r.read(); code != 'a' {
					t.Fatalf("message %d: end: %q", i+1, code)
				}
			}
		})
	}
}

// A filter waiting at a stage the MTA does not wait for (the end of the
// headers, negotiated without a reply) learns of the MTA hanging up: its
// context is cancelled and the connection closed, over TCP and a unix
// socket, long before any timeout (an hour here).
func TestHangUpCancelsAStageWithoutReply(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			f := &eohFilter{block: true, cancelled: make(chan error, 1)}
			td := startDoorWith(t, milterdoor.Options{WatchDelay: 50 * time.Millisecond, IdleTimeout: time.Hour}, pipeline.Member{Filter: f, Timeout: time.Hour})
			addr := td.addr
			if network == "unix" {
				addr = filepath.Join(t.TempDir(), "milter.sock")
				ln, err := net.Listen("unix", addr)
				if err != nil {
					t.Fatal(err)
				}
				go td.door.Serve(ln)
			}
			c, err := net.Dial(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(negotiation()) // an MTA offering every no-reply flag
			r := &raw{t: t, c: c}
			code, neg := r.read()
			if code != 'O' || len(neg) < 12 || milter.OptProtocol(binary.BigEndian.Uint32(neg[8:]))&milter.OptNoEOHReply == 0 {
				t.Fatalf("negotiated %q %x: want the end of headers without a reply", code, neg)
			}
			for _, p := range []struct {
				cmd  byte
				data string
			}{{'C', "mx.example.org\x004\x00\x19192.0.2.1\x00"}, {'M', "<a@example.org>\x00"}, {'R', "<u@example.edu>\x00"}, {'L', "Subject\x00hi\x00"}, {'N', ""}, {'B', "more body the MTA sent before it gave up\r\n"}} {
				r.send(p.cmd, p.data)
			}
			waitFor(t, func() bool { return f.eoh.Load() == 1 })
			c.Close()
			hungUp := time.Now()
			select {
			case err := <-f.cancelled:
				t.Logf("cancelled %v after the hang-up (watch delay 50ms)", time.Since(hungUp).Round(time.Millisecond))
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("the waiting filter's context: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the MTA hung up and the filter waiting at a stage without reply was not told")
			}
			waitFor(t, func() bool { return td.door.Active() == 0 })
			if logs := td.log(); !strings.Contains(logs, "MTA hung up; filter calls cancelled") {
				t.Errorf("not logged:\n%s", logs)
			}
		})
	}
}
