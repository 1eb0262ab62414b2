package milterdoor

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

	"mailguard/internal/pipeline"
)

// Connections that announce large packets and send a few bytes hold only
// those bytes of the large-packet budget: an honest header field over
// 64 KiB still gets through. (Charged by the announced growth step, 16
// such connections spent a 1 MiB budget.)
func TestLargePacketBudgetChargesBytesRead(t *testing.T) {
	const budget, idle = 1 << 20, 64
	cf := &countingFilter{}
	p := pipeline.New(pipeline.Env{Log: slog.New(slog.DiscardHandler), Now: time.Now}, pipeline.Member{Filter: cf})
	d := New(p, slog.New(slog.DiscardHandler), Options{LargePacketBudget: budget})
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
	for i := 0; i < idle; i++ {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		neg := binary.BigEndian.AppendUint32(nil, 13)
		neg = append(neg, 'O')
		neg = binary.BigEndian.AppendUint32(neg, 6)
		neg = binary.BigEndian.AppendUint32(neg, 0x1ff)
		neg = binary.BigEndian.AppendUint32(neg, 0)
		c.Write(neg)
		var head [4]byte
		if _, err := io.ReadFull(c, head[:]); err != nil {
			t.Fatal(err)
		}
		io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(head[:])))
		// A header packet of 256 KiB announced; its first 5 bytes sent.
		c.Write(append(binary.BigEndian.AppendUint32(nil, 256<<10), 'L', 'X', '-', 'Y', 0))
	}
	// Every idle connection's bytes have been read (or its packet refused).
	for d.budget.used.Load() < idle*5 {
		time.Sleep(time.Millisecond)
	}

	s, err := milter.NewClient("tcp", ln.Addr().String()).Session(milter.NewMacroBag())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	value := strings.Repeat("x", 100<<10)
	steps := []func() (*milter.Action, error){
		func() (*milter.Action, error) { return s.Conn("mx.example.org", milter.FamilyInet, 25, "192.0.2.1") },
		func() (*milter.Action, error) { return s.Helo("mx.example.org") },
		func() (*milter.Action, error) { return s.Mail("a@example.org", "") },
		func() (*milter.Action, error) { return s.Rcpt("u@example.edu", "") },
		func() (*milter.Action, error) { return s.DataStart() },
		func() (*milter.Action, error) { return s.HeaderField("X-Long", value, nil) },
		func() (*milter.Action, error) { return s.HeaderEnd() },
		func() (*milter.Action, error) { return s.BodyChunk([]byte("x\r\n")) },
	}
	for i, step := range steps {
		if _, err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if _, act, err := s.End(); err != nil || act.Type != milter.ActionAccept {
		t.Fatalf("a message with a 100 KiB header field, beside %d idle large packets: %+v, %v", idle, act, err)
	}
	if used := d.budget.used.Load(); used != idle*5 {
		t.Errorf("budget holds %d bytes; the idle connections sent %d", used, idle*5)
	}
}
