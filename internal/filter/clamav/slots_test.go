package clamav_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/clamd"
	"mailguard/internal/clamd/clamdtest"
	"mailguard/internal/filter/clamav"
	"mailguard/internal/filter/virus"
	"mailguard/internal/logging"
	"mailguard/internal/milterdoor"
	"mailguard/internal/milterdoor/doortest"
	"mailguard/internal/pipeline"
	"mailguard/internal/sigfile"
	"mailguard/internal/stats"
	"mailguard/internal/verdict"
)

const sobig = "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3"

// slotPipeline is the signature filter, then clamav (max_size 64K) on a
// pool of two connections to the fake clamd at sock, each call bounded
// by 2 s: a message that finds no free connection gets on_error (451)
// at once.
func slotPipeline(t *testing.T, sock string) (*pipeline.Pipeline, *clamd.Pool) {
	t.Helper()
	pool := clamd.NewPool([]clamd.Address{{Network: "unix", Addr: sock}}, clamd.PoolOptions{MaxConns: 2})
	sigs, err := sigfile.Parse("test", strings.NewReader("WORM_SOBIG.B =\n"+sobig+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	vf, err := virus.New(sigs, virus.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cf := clamav.New(clamav.Options{Pool: pool, MaxSize: 64 << 10, Log: logging.Discard()})
	p := pipeline.New(pipeline.Env{Log: logging.Discard(), Stats: stats.NewCounter(), Now: time.Now},
		pipeline.Member{Filter: vf}, pipeline.Member{Filter: cf, Timeout: 2 * time.Second})
	return p, pool
}

// droppingClamd reads each stream and closes the connection without a
// verdict when the stream carries "DROP", as a clamd that crashed would.
func droppingClamd(t *testing.T) string {
	sock := filepath.Join(t.TempDir(), "clamd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for id := 1; ; id++ {
					cmd, err := clamdtest.ReadCommand(c)
					if cmd == "zIDSESSION" {
						cmd, err = clamdtest.ReadCommand(c)
					}
					if err != nil || cmd != "zINSTREAM" {
						return
					}
					var data []byte
					if clamdtest.ReadChunks(c, 1<<20, func(b []byte) { data = append(data, b...) }) != nil || strings.Contains(string(data), "DROP") {
						return
					}
					fmt.Fprintf(c, "%d: stream: OK\x00", id)
				}
			}()
		}
	}()
	return sock
}

// Every way a message can end gives its clamd connection back: a
// repeated end of headers (which must not open a second stream), an
// abort, the MTA hanging up, a refusal by an earlier filter, clamd
// failing. Each is done more times than the pool has connections; a
// leak would leave the next message without one (451).
func TestEveryPathReleasesItsConnection(t *testing.T) {
	sock := droppingClamd(t)
	var p *pipeline.Pipeline
	type msg struct {
		m  *pipeline.Message
		cn *pipeline.Connection
	}
	begin := func() msg {
		cn := p.Open(context.Background(), &pipeline.Conn{})
		m, _ := cn.Begin(pipeline.AllStages, pipeline.AllModifications, "a@example.org", "")
		m.Rcpt("b@example.com", "")
		return msg{m, cn}
	}
	end := func(x msg) verdict.Verdict {
		v := x.m.End()
		x.m.Close()
		x.cn.Close()
		return v
	}
	paths := []struct {
		name string
		run  func() verdict.Verdict
		want verdict.Action
	}{
		{"end of headers twice", func() verdict.Verdict {
			x := begin()
			x.m.Header("Subject", "hi")
			x.m.EndOfHeaders()
			x.m.EndOfHeaders()
			x.m.Body([]byte("hello\r\n"))
			return end(x)
		}, verdict.Continue},
		{"end of headers again after the body", func() verdict.Verdict {
			x := begin()
			x.m.Header("Subject", "hi")
			x.m.EndOfHeaders()
			x.m.Body([]byte("hello\r\n"))
			x.m.Header("Subject", "again")
			x.m.EndOfHeaders()
			x.m.Body([]byte("more\r\n"))
			return end(x)
		}, verdict.Continue},
		{"aborted", func() verdict.Verdict {
			x := begin()
			x.m.Header("Subject", "hi")
			x.m.EndOfHeaders()
			x.m.Body([]byte("hello\r\n"))
			x.m.Close()
			x.cn.Close()
			return verdict.Pass
		}, verdict.Continue},
		{"MTA hung up", func() verdict.Verdict {
			x := begin()
			x.m.Header("Subject", "hi")
			x.m.EndOfHeaders()
			x.m.Body([]byte("hello\r\n"))
			x.cn.Cancel()
			x.m.Body([]byte("more\r\n"))
			x.m.Close()
			x.cn.Close()
			return verdict.Pass
		}, verdict.Continue},
		{"refused by the signature filter", func() verdict.Verdict {
			x := begin()
			x.m.Header("Subject", "hi")
			x.m.EndOfHeaders()
			x.m.Body([]byte(sobig + "\r\n"))
			return end(x)
		}, verdict.Reject},
		{"clamd failed", func() verdict.Verdict {
			x := begin()
			x.m.Header("Subject", "hi")
			x.m.EndOfHeaders()
			x.m.Body([]byte("DROP\r\n"))
			return end(x)
		}, verdict.TempFail},
		{"no header stage", func() verdict.Verdict {
			x := begin()
			x.m.Body([]byte("hello\r\n"))
			return end(x)
		}, verdict.Continue},
		{"empty", func() verdict.Verdict { return end(begin()) }, verdict.Continue},
		// A message clamd drops gets 451: proof that it was streamed, not
		// pushed past max_size by what was never sent (and accepted
		// unscanned, on_oversize's default).
		{"end of headers past max_size", func() verdict.Verdict {
			x := begin()
			x.m.Header("Subject", "hi")
			for range 40 << 10 {
				x.m.EndOfHeaders()
			}
			x.m.Body([]byte("DROP\r\n"))
			return end(x)
		}, verdict.TempFail},
		{"header fields after the end of headers", func() verdict.Verdict {
			x := begin()
			x.m.Header("Subject", "hi")
			x.m.EndOfHeaders()
			for range 100 {
				x.m.Header("X-Late", strings.Repeat("x", 1000))
			}
			x.m.Body([]byte("DROP\r\n"))
			return end(x)
		}, verdict.TempFail},
		{"end of message twice", func() verdict.Verdict {
			x := begin()
			x.m.Header("Subject", "hi")
			x.m.EndOfHeaders()
			x.m.Body([]byte("hello\r\n"))
			x.m.End()
			return end(x) // the stream is over: on_error, no second stream
		}, verdict.TempFail},
	}
	for _, path := range paths {
		t.Run(path.name, func(t *testing.T) {
			var pool *clamd.Pool
			p, pool = slotPipeline(t, sock)
			for i := range 5 {
				if v := path.run(); v.Action != path.want {
					t.Fatalf("message %d: got %v, want %v", i+1, v, path.want)
				}
			}
			if busy, _ := pool.Connections(); busy != 0 {
				t.Fatalf("%d clamd connections still in use", busy)
			}
		})
	}
}

// rawMTA speaks the milter protocol by hand, as an MTA offering no
// protocol flags (so every command is answered): go-milter's client will
// not send an end of headers twice.
type rawMTA struct{ c net.Conn }

func (r rawMTA) send(cmd byte, data string) error {
	pkt := binary.BigEndian.AppendUint32(nil, uint32(len(data)+1))
	_, err := r.c.Write(append(append(pkt, cmd), data...))
	return err
}

// read returns the next packet's command byte.
func (r rawMTA) read() (byte, error) {
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var head [4]byte
	if _, err := io.ReadFull(r.c, head[:]); err != nil {
		return 0, err
	}
	pkt := make([]byte, binary.BigEndian.Uint32(head[:]))
	if _, err := io.ReadFull(r.c, pkt); err != nil {
		return 0, err
	}
	if len(pkt) == 0 {
		return 0, errors.New("empty packet")
	}
	return pkt[0], nil
}

// repeatedEOH sends one message whose end of headers comes twice, and
// reads the answers until the end (or the door closes the connection).
func repeatedEOH(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	r := rawMTA{c}
	var neg [12]byte
	binary.BigEndian.PutUint32(neg[0:], 6)
	binary.BigEndian.PutUint32(neg[4:], 0x1ff)
	steps := []struct {
		cmd  byte
		data string
	}{{'O', string(neg[:])}, {'C', "mx.example.org\x004\x00\x19192.0.2.1\x00"}, {'M', "<a@example.org>\x00"}, {'R', "<u@example.edu>\x00"},
		{'L', "Subject\x00hello\x00"}, {'N', ""}, {'N', ""}, {'B', "hello\r\n"}}
	for _, s := range steps {
		if err := r.send(s.cmd, s.data); err != nil {
			return nil // the door may hang up on a repeated command
		}
		if _, err := r.read(); err != nil {
			return nil
		}
	}
	if err := r.send('E', ""); err != nil {
		return nil
	}
	for {
		cmd, err := r.read()
		if err != nil || strings.IndexByte("acrty", cmd) >= 0 {
			return nil
		}
	}
}

// Through the milter door: messages whose end of headers comes twice,
// more than the pool has connections, leave none in use once their
// sessions end, and the next message (from go-milter's client, as an MTA
// would send it) is scanned and accepted, not refused for want of a
// connection.
func TestRepeatedEndOfHeadersThroughMilter(t *testing.T) {
	sock := droppingClamd(t)
	p, pool := slotPipeline(t, sock)
	_, addr := doortest.Serve(t, p, milterdoor.Options{})
	for range 5 {
		if err := repeatedEOH(addr); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every clamd connection given back", func() bool { busy, _ := pool.Connections(); return busy == 0 })

	s, err := milter.NewClient("tcp", addr, milter.WithReadTimeout(30*time.Second)).Session(milter.NewMacroBag())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, step := range []func() (*milter.Action, error){
		func() (*milter.Action, error) { return s.Conn("mx.example.org", milter.FamilyInet, 25, "192.0.2.1") },
		func() (*milter.Action, error) { return s.Helo("mx.example.org") },
		func() (*milter.Action, error) { return s.Mail("a@example.org", "") },
		func() (*milter.Action, error) { return s.Rcpt("u@example.edu", "") },
		func() (*milter.Action, error) { return s.DataStart() },
		func() (*milter.Action, error) { return s.HeaderField("Subject", "hello", nil) },
		func() (*milter.Action, error) { return s.HeaderEnd() },
		func() (*milter.Action, error) { return s.BodyChunk([]byte("hello\r\n")) },
	} {
		if act, err := step(); err != nil || act.StopProcessing() {
			t.Fatalf("%v %v", act, err)
		}
	}
	_, act, err := s.End()
	if err != nil || act.StopProcessing() {
		t.Fatalf("the next message: %+v %v", act, err)
	}
}
