package milterdoor

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mailguard/internal/clamd"
	"mailguard/internal/clamd/clamdtest"
	"mailguard/internal/filter/attachments"
	"mailguard/internal/filter/clamav"
	"mailguard/internal/filter/virus"
	"mailguard/internal/pipeline"
	"mailguard/internal/sigfile"
	"mailguard/internal/verdict"
)

// countingFilter counts its open checks and connection states, and asks
// for header changes, so a fuzzed session exercises them and a leak shows.
type countingFilter struct {
	pipeline.NopCheck
	checks, states atomic.Int64
}

func (f *countingFilter) Name() string { return "counting" }
func (f *countingFilter) Stages() (reads, decides pipeline.Stage) {
	return pipeline.StageHelo | pipeline.StageHeader, pipeline.StageRcpt | pipeline.StageEndOfMessage
}
func (f *countingFilter) Modifies() pipeline.Modification { return pipeline.AllModifications }
func (f *countingFilter) Macros() map[pipeline.Stage][]string {
	return map[pipeline.Stage][]string{pipeline.StageMail: {"{auth_authen}"}}
}
func (f *countingFilter) NewCheck(context.Context, *pipeline.Envelope) (pipeline.Check, error) {
	f.checks.Add(1)
	return &countingCheck{f: f}, nil
}
func (f *countingFilter) NewConnState(context.Context, *pipeline.Conn) (pipeline.ConnState, error) {
	f.states.Add(1)
	return countingState{f}, nil
}

type countingState struct{ f *countingFilter }

func (s countingState) Connect(context.Context, *pipeline.Conn) (verdict.Verdict, error) {
	return verdict.Pass, nil
}
func (s countingState) Helo(context.Context, *pipeline.Conn) (verdict.Verdict, error) {
	return verdict.Pass, nil
}
func (s countingState) Close() { s.f.states.Add(-1) }

type countingCheck struct {
	pipeline.NopCheck
	f *countingFilter
}

func (c *countingCheck) Rcpt(_ context.Context, env *pipeline.Envelope, rcpt, _ string) (verdict.Verdict, error) {
	if strings.Contains(rcpt, "full") {
		return verdict.Rejectf(552, verdict.EnhMailboxFull, "Mailbox full"), nil
	}
	return verdict.Pass, nil
}
func (c *countingCheck) EndOfMessage(_ context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	env.AddHeader("X-Fuzz", env.Macro("auth_authen"))
	if len(env.Rcpts) > 1 {
		env.RemoveRcpt(env.Rcpts[0], "fuzz")
	}
	return verdict.Pass, nil
}
func (c *countingCheck) Close() { c.f.checks.Add(-1) }

// FuzzServe feeds raw bytes, as an MTA would send them, through the real
// connection loop (framing, negotiation, macros, every stage), seeded with
// sessions recorded from Postfix and Sendmail in the end-to-end tests
// (testdata/fuzz/FuzzServe; record more with MAILGUARD_RECORD_SEEDS=DIR).
// Whatever the bytes: the session ends when the stream does, no panic, no
// filter state left open, and the memory a packet may take stays within
// the protocol's bound.
func FuzzServe(f *testing.F) {
	neg := binary.BigEndian.AppendUint32(nil, 13)
	neg = append(neg, 'O')
	neg = binary.BigEndian.AppendUint32(neg, 6)
	neg = binary.BigEndian.AppendUint32(neg, 0x1ff)
	neg = binary.BigEndian.AppendUint32(neg, 0)
	pkt := func(cmd byte, data string) []byte {
		return append(append(binary.BigEndian.AppendUint32(nil, uint32(len(data)+1)), cmd), data...)
	}
	recorded := bytes.Join([][]byte{neg, pkt('D', "C{daemon_name}\x00smtpd\x00"), pkt('C', "mx\x004\x00\x19192.0.2.1\x00"),
		pkt('H', "helo.example"), pkt('D', "M{auth_authen}\x00alice\x00"), pkt('M', "<a@b>\x00SIZE=10\x00"),
		pkt('R', "<full@x>\x00"), pkt('R', "<u@x>\x00"), pkt('R', "<v@x>\x00"), pkt('L', "Subject\x00hi\x00"), pkt('N', ""),
		pkt('B', "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDya"), pkt('E', ""), pkt('Q', "")}, nil)
	f.Add(recorded)
	f.Add(append(neg, 0x00, 0x04, 0x00, 0x00, 'L'))
	// A message with an attachment both filters look at, its end of
	// headers sent twice.
	mime := "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/octet-stream\r\n" +
		"Content-Disposition: attachment; filename=\"invoice.pdf.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		"TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAA==\r\nRUlDQVI=\r\n--b--\r\n"
	attach := bytes.Join([][]byte{neg, pkt('C', "mx\x004\x00\x19192.0.2.1\x00"), pkt('M', "<a@b>\x00"), pkt('R', "<u@x>\x00"),
		pkt('L', "Content-Type\x00multipart/mixed; boundary=b\x00"), pkt('L', "X-Virus-Status\x00Clean\x00"), pkt('N', ""), pkt('N', ""),
		pkt('B', mime), pkt('E', ""), pkt('M', "<a@b>\x00"), pkt('R', "<u@x>\x00"), pkt('N', ""), pkt('B', "EICAR as text\r\n"), pkt('E', ""), pkt('Q', "")}, nil)
	f.Add(attach)
	f.Add(bytes.Replace(attach, append(pkt('N', ""), pkt('N', "")...), pkt('N', ""), 1)) // in order
	sigs, _ := sigfile.Parse("f", strings.NewReader("S = uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDya\n"))
	vf, _ := virus.New(sigs, virus.Options{})
	cf := &countingFilter{}
	var logs bytes.Buffer
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(&lockedBuf{b: &logs, mu: &logMu}, nil))
	// clamav against a stand-in clamd, with as few connection slots as
	// a leak needs to show; attachments with every rule on.
	const clamdSlots = 2
	pool := clamd.NewPool([]clamd.Address{startFuzzClamd(f)}, clamd.PoolOptions{MaxConns: clamdSlots, DialTimeout: time.Second})
	cl := clamav.New(clamav.Options{Pool: pool, MaxSize: 64 << 10, Headers: clamav.HeadersReplace, Log: log})
	af := attachments.New(attachments.Options{BlockNames: []string{"*.exe"}, DoubleExt: true, Disguised: true, Archives: true,
		OnLimit: attachments.PolicyReject, OnMalformed: attachments.PolicyTempFail, Log: log})
	p := pipeline.New(pipeline.Env{Log: log, Now: time.Now}, pipeline.Member{Filter: vf},
		pipeline.Member{Filter: cl, Timeout: 2 * time.Second, OnError: pipeline.OnErrorTempFail},
		pipeline.Member{Filter: af, Timeout: 2 * time.Second},
		pipeline.Member{Filter: cf, Mode: pipeline.Monitor})
	d := New(p, log, Options{IdleTimeout: 5 * time.Second, NegotiationTimeout: 5 * time.Second})
	// A real socket: the stream ends with a half-close, after the door
	// has answered (into io.Discard) every command it was sent.
	ln, err := net.Listen("unix", filepath.Join(f.TempDir(), "door.sock"))
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	f.Fuzz(func(t *testing.T, data []byte) {
		client, err := net.Dial("unix", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		s := &session{door: d, w: newWireConn(server, 5*time.Second, d.budget)}
		if !d.track(s) {
			t.Fatal("door closed")
		}
		done := make(chan struct{})
		go func() { s.serve(); close(done) }()
		go io.Copy(io.Discard, client)
		client.SetWriteDeadline(time.Now().Add(5 * time.Second))
		client.Write(data)
		client.(*net.UnixConn).CloseWrite()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the session did not end with its stream")
		}
		logMu.Lock()
		panicked := strings.Contains(logs.String(), "panicked")
		logs.Reset()
		logMu.Unlock()
		if panicked {
			t.Fatal("a session panicked")
		}
		if n, m := cf.checks.Load(), cf.states.Load(); n != 0 || m != 0 {
			t.Fatalf("%d checks and %d connection states left open", n, m)
		}
		if used, peak := d.budget.used.Load(), d.budget.peak.Load(); used != 0 || peak > maxPacket {
			t.Fatalf("large-packet memory: %d held after the session, peak %d", used, peak)
		}
		// Every clamd slot is free again: each can be taken at once.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var streams []*clamd.Stream
		for range clamdSlots {
			st, err := pool.Open(ctx)
			if err != nil {
				t.Fatalf("a clamd slot outlived its session: %v", err)
			}
			streams = append(streams, st)
		}
		for _, st := range streams {
			st.Close()
		}
	})
}

// startFuzzClamd starts a stand-in clamd on a unix socket: it answers
// every stream, FOUND when it holds "EICAR".
func startFuzzClamd(f *testing.F) clamd.Address {
	path := filepath.Join(f.TempDir(), "clamd.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for id := 1; ; id++ {
					cmd, err := clamdtest.ReadCommand(c)
					if err == nil && cmd == "zIDSESSION" {
						cmd, err = clamdtest.ReadCommand(c)
					}
					if err != nil || cmd != "zINSTREAM" {
						return
					}
					var got []byte
					if err := clamdtest.ReadChunks(c, 1<<20, func(b []byte) { got = append(got, b...) }); err != nil {
						return
					}
					reply := "stream: OK"
					if bytes.Contains(got, []byte("EICAR")) {
						reply = "stream: Eicar-Test-Signature FOUND"
					}
					fmt.Fprintf(c, "%d: %s\x00", id, reply)
				}
			}()
		}
	}()
	a, err := clamd.ParseAddress("unix:" + path)
	if err != nil {
		f.Fatal(err)
	}
	return a
}

type lockedBuf struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
