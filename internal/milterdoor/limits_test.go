package milterdoor_test

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"mailguard/internal/milterdoor"
	"mailguard/internal/pipeline"
)

// closedWithin reports whether the door closes c within d, without the
// client closing its side.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	// EOF, or a reset when the door closed with our bytes unread: closed.
	return !(errors.As(err, &ne) && ne.Timeout())
}

// A connection that never negotiates is closed after the negotiation
// timeout, not the (much longer) idle timeout.
func TestNegotiationTimeout(t *testing.T) {
	td := startDoorWith(t, milterdoor.Options{NegotiationTimeout: 200 * time.Millisecond, IdleTimeout: time.Hour}, pipeline.Member{Filter: &apiFilter{}})
	c, err := net.Dial("tcp", td.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0, 0}) // half a header, then silence
	if !closedWithin(c, 3*time.Second) {
		t.Fatal("a silent connection outlived the negotiation timeout")
	}
}

// Past max_connections a connection is closed at once, with a log line
// (one per minute, however many); the sessions under the cap work.
func TestMaxConnections(t *testing.T) {
	td := startDoorWith(t, milterdoor.Options{MaxConnections: 5}, pipeline.Member{Filter: &apiFilter{}})
	var held []net.Conn
	for i := 0; i < 5; i++ {
		r := dialRaw(t, td.addr)
		r.read()
		held = append(held, r.c)
	}
	for i := 0; i < 20; i++ {
		c, err := net.Dial("tcp", td.addr)
		if err != nil {
			t.Fatal(err)
		}
		if !closedWithin(c, 2*time.Second) {
			t.Fatalf("connection %d over the cap was not closed", 6+i)
		}
		c.Close()
	}
	if logs := td.log(); strings.Count(logs, "max_connections reached") != 1 {
		t.Errorf("refusals not logged once:\n%s", logs)
	}
	held[0].Close()
	waitFor(t, func() bool { return td.door.Active() == 4 })
	s := newSession(t, td)
	connect(t, s)
	assertAccept(t, sendMessage(t, s, []byte("x\r\n"), 10))
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// A packet's announced length costs nothing until its bytes arrive;
// packets over the protocol's bound are refused; and the bytes held in
// large packets are bounded for the whole door.
func TestPacketMemoryBounded(t *testing.T) {
	td := startDoorWith(t, milterdoor.Options{LargePacketBudget: 4 << 20}, pipeline.Member{Filter: &apiFilter{}})
	before := heapInUse()
	const conns = 200
	var cs []net.Conn
	for i := 0; i < conns; i++ {
		r := dialRaw(t, td.addr)
		r.read()
		// A header packet of 256 KiB announced; 5 bytes sent.
		r.c.Write(append(binary.BigEndian.AppendUint32(nil, 256<<10), 'L', 'X', '-', 'Y', 0))
		cs = append(cs, r.c)
	}
	time.Sleep(200 * time.Millisecond)
	grown := int64(heapInUse()) - int64(before)
	t.Logf("%d connections announcing 256 KiB packets: heap grew %d KB (%d bytes each)", conns, grown/1024, grown/conns)
	if grown > conns*100<<10 {
		t.Errorf("heap grew %d bytes for %d connections announcing large packets", grown, conns)
	}
	for _, c := range cs {
		c.Close()
	}

	// Over the bound: refused at once.
	r := dialRaw(t, td.addr)
	r.read()
	r.c.Write(append(binary.BigEndian.AppendUint32(nil, 1<<20), 'L'))
	if !closedWithin(r.c, 2*time.Second) {
		t.Fatal("a 1 MiB packet was not refused")
	}

	// All but the last byte of 200 KiB header packets, on 50 connections:
	// 10 MB asked, 4 MiB allowed.
	before = heapInUse()
	closed := 0
	for i := 0; i < 50; i++ {
		r := dialRaw(t, td.addr)
		r.read()
		body := make([]byte, 200<<10)
		pkt := append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+1)), 'L')
		r.c.Write(append(pkt, body[:len(body)-1]...))
		cs = append(cs, r.c)
	}
	time.Sleep(500 * time.Millisecond)
	grown = int64(heapInUse()) - int64(before)
	for _, c := range cs[conns:] {
		if closedWithin(c, 50*time.Millisecond) {
			closed++
		}
	}
	t.Logf("50 connections with 200 KiB packets in flight: heap grew %d KB, %d closed over the budget", grown/1024, closed)
	if grown > 4<<20+50*100<<10 || closed == 0 {
		t.Errorf("large packets: heap grew %d bytes, %d connections closed", grown, closed)
	}
}

// flakyListener fails Accept with errors a loaded machine gives (out of
// file table entries, of buffers) before it accepts.
type flakyListener struct {
	net.Listener
	fails atomic.Int64
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.ENFILE)}
	}
	return l.Listener.Accept()
}

// Accept errors other than a closed listener are waited out: the door
// keeps serving.
func TestAcceptErrorsWaitedOut(t *testing.T) {
	td := startDoorWith(t, milterdoor.Options{}, pipeline.Member{Filter: &apiFilter{}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: ln}
	fl.fails.Store(5)
	served := make(chan error, 1)
	go func() { served <- td.door.Serve(fl) }()
	td.addr = ln.Addr().String()
	s := newSession(t, td)
	connect(t, s)
	assertAccept(t, sendMessage(t, s, []byte("x\r\n"), 10))
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v after accept errors", err)
	default:
	}
	if logs := td.log(); !strings.Contains(logs, "accept failed; retrying") {
		t.Errorf("accept errors not logged:\n%s", logs)
	}
}
