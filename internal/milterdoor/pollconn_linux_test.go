// The raw connections these tests check are built only without the race
// detector (its build serves net's); scripts/test runs this package once
// without it.

//go:build !race

package milterdoor

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// acceptedPollConn returns the MTA's end of a unix socket and ours, as
// the door accepts it (a raw accept) and a worker serves it (attached to
// p), or to a poller of its own if p is nil.
func acceptedPollConn(t *testing.T, p *workerPoller) (mta net.Conn, ours *pollConn) {
	t.Helper()
	ln, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	acc, ok := newAccepter(ln).(*rawAccepter)
	if !ok {
		t.Fatal("a unix listener is not accepted with raw calls")
	}
	defer acc.Close()
	mta, err = net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := acc.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ours, ok = c.(*pollConn)
	if !ok {
		t.Fatalf("accepted %T, want a pollConn", c)
	}
	if p == nil {
		p = new(workerPoller)
		t.Cleanup(p.close)
	}
	if !p.attach(ours) {
		t.Fatal("attach failed")
	}
	t.Cleanup(func() { mta.Close(); ours.finish() })
	return mta, ours
}

// openFiles is the number of this process's open descriptors.
func openFiles(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// The worker's poller watches the socket for input and hang-ups only: a
// Unix socket signals "writable" whenever the MTA reads a reply, and a
// poller watching for that woke the daemon for nothing after nearly every
// reply.
func TestPollerWatchesInputOnly(t *testing.T) {
	var p workerPoller
	defer p.close()
	_, c := acceptedPollConn(t, &p)
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", p.p.fd))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var events uint64
	found := false
	for sc := bufio.NewScanner(f); sc.Scan(); {
		// tfd:        7 events:     2019 data: ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[0] != "tfd:" || fields[1] != strconv.Itoa(c.fd) {
			continue
		}
		if events, err = strconv.ParseUint(fields[3], 16, 32); err != nil {
			t.Fatal(err)
		}
		found = true
	}
	if !found {
		t.Fatalf("the socket (%d) is not in the worker's poller", c.fd)
	}
	const in, out, rdhup = 0x1, 0x4, 0x2000
	if events&in == 0 || events&rdhup == 0 || events&out != 0 {
		t.Fatalf("the socket is watched for events %#x, want input and hang-up (%#x) without output (%#x)", events, in|rdhup, out)
	}
}

// Replies written while the MTA does not read fill the socket's buffer;
// the next write waits, under the idle deadline, and what the MTA reads
// later is every reply, intact.
func TestPollConnWriteWaitsForAFullSocket(t *testing.T) {
	_, ours := acceptedPollConn(t, nil)
	w := newWireConn(ours, 200*time.Millisecond, nil)
	payload := bytes.Repeat([]byte("x"), 60000)
	var err error
	sent := 0
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

	mta2, ours2 := acceptedPollConn(t, nil)
	w2 := newWireConn(ours2, 10*time.Second, nil)
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(mta2); got <- b }()
	const n = 100
	for range n {
		if err := w2.writePacket(replyAccept, payload); err != nil {
			t.Fatal(err)
		}
	}
	ours2.finish()
	if b := <-got; len(b) != n*(5+len(payload)) {
		t.Fatalf("the MTA read %d bytes, want %d", len(b), n*(5+len(payload)))
	}
}

// A read waits for input until its deadline, and a deadline set while it
// waits (how a stage's end wakes its watch) ends the wait.
func TestPollConnReadDeadline(t *testing.T) {
	_, c := acceptedPollConn(t, nil)
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	_, err := c.Read(make([]byte, 10))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read with nothing sent: %v, want the deadline", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("the deadline did not end the read")
	}

	c.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 10)); done <- err }()
	time.Sleep(50 * time.Millisecond)
	c.SetReadDeadline(time.Now())
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("woken read: %v, want the deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a deadline set during the wait did not end it")
	}
}

// Another goroutine's Close (the drain, Shutdown) ends a waiting read and
// the MTA's side at once, and leaves the descriptor to its owner.
func TestPollConnCloseEndsAWaitingRead(t *testing.T) {
	mta, c := acceptedPollConn(t, nil)
	done := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 10)); done <- err }()
	time.Sleep(50 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read ended by Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the waiting read")
	}
	mta.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := mta.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the MTA reads %v after Close, want EOF", err)
	}
	if c.fd < 0 {
		t.Fatal("Close closed the descriptor its owner may still use")
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v, want net.ErrClosed", err)
	}
}

// A worker serves its connections one after another on one poller, and
// each connection's descriptor is closed when its owner is done with it.
func TestWorkerPollerServesConnectionsInTurn(t *testing.T) {
	var p workerPoller
	defer p.close()
	acceptedPollConn(t, &p) // makes the poller, which stays open
	before := openFiles(t)
	for i := range 20 {
		mta, c := acceptedPollConn(t, &p)
		if _, err := mta.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
			t.Fatalf("connection %d: read %q, %v", i, b, err)
		}
		if _, err := c.Write([]byte("pong")); err != nil {
			t.Fatal(err)
		}
		mta.Close()
		c.finish()
	}
	if after := openFiles(t); after > before {
		t.Fatalf("%d descriptors open after 20 connections, %d before", after, before)
	}
}
