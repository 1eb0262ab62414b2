package milterdoor

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// unixPair returns the two ends of a connected unix socket.
func unixPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err = net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// Replies written while the MTA does not read fill the socket's buffer;
// the next write then waits, under the idle deadline, instead of failing
// or spinning, and what the MTA reads later is every reply, intact.
func TestWritePacketWaitsForAFullSocket(t *testing.T) {
	writesWaitForAFullSocket(t, func(t *testing.T) (net.Conn, net.Conn, func()) {
		mta, ours := unixPair(t)
		return mta, ours, func() { ours.Close() }
	})
}

// writesWaitForAFullSocket checks the wait of writePacket on the
// connections pair makes; done ends ours.
func writesWaitForAFullSocket(t *testing.T, pair func(*testing.T) (mta, ours net.Conn, done func())) {
	_, ours, _ := pair(t)
	w := newWireConn(ours, 200*time.Millisecond, nil)
	payload := bytes.Repeat([]byte("x"), 60000)
	var sent int
	var err error
	for range 1000 {
		if err = w.writePacket(replyAccept, payload); err != nil {
			break
		}
		sent++
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a write to a full socket nobody reads: %v, want the idle deadline", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("%v is not a timeout", err)
	}
	if sent == 0 {
		t.Fatal("no write went through")
	}

	// With the MTA reading, a write that must wait gets through.
	mta2, ours2, done := pair(t)
	w2 := newWireConn(ours2, 10*time.Second, nil)
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(mta2); got <- b }()
	const n = 100
	for i := range n {
		if err := w2.writePacket(replyAccept, payload); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	done()
	all := <-got
	if len(all) != n*(5+len(payload)) {
		t.Fatalf("the MTA read %d bytes, want %d", len(all), n*(5+len(payload)))
	}
	for i := range n {
		pkt := all[i*(5+len(payload)):]
		if pkt[4] != replyAccept || !bytes.Equal(pkt[5:5+len(payload)], payload) {
			t.Fatalf("packet %d damaged", i)
		}
	}
}
