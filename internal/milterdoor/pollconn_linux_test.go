package milterdoor

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// acceptedPollConn returns the MTA's end of a unix socket and ours as a
// worker serves it (attached to p, or to a poller of its own if p is
// nil). It is made from a socket pair, not accepted, so the race
// detector's build (which accepts net's connections) checks it too.
func acceptedPollConn(t *testing.T, p *workerPoller) (mta net.Conn, ours *pollConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "mta")
	mta, err = net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	ours = newPollConn(fds[1], "unix")
	if p == nil {
		p = new(workerPoller)
		t.Cleanup(p.close)
	}
	if err := p.attach(ours); err != nil {
		t.Fatal(err)
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
	writesWaitForAFullSocket(t, func(t *testing.T) (net.Conn, net.Conn, func()) {
		mta, ours := acceptedPollConn(t, nil)
		return mta, ours, ours.finish
	})
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

// Close, the hang-up check (Control) and the owner's finish may meet:
// none of them may use the descriptor after finish closed it, since the
// next accept may get its number.
func TestPollConnCloseMeetsFinish(t *testing.T) {
	var p workerPoller
	defer p.close()
	acceptedPollConn(t, &p) // makes the poller, which stays open
	before := openFiles(t)
	for range 200 {
		mta, c := acceptedPollConn(t, &p)
		var wg sync.WaitGroup
		wg.Add(3)
		go func() { defer wg.Done(); c.Close() }()
		go func() { defer wg.Done(); peerHungUp(c) }()
		go func() { defer wg.Done(); c.finish() }()
		wg.Wait()
		if c.fd != -1 {
			t.Fatal("finish left the descriptor open")
		}
		mta.Close()
	}
	if after := openFiles(t); after > before {
		t.Fatalf("%d descriptors open after 200 connections, %d before", after, before)
	}
}

// threads is the number of this process's threads.
func threads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Threads:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatal("no thread count")
	return 0
}

// Peers that stop reading leave our replies waiting for room: each wait
// parks its goroutine in the runtime's poller and holds no thread (a
// thread each would end the daemon at Go's 10,000), and another
// goroutine's Close ends it.
func TestWaitingWritesHoldNoThread(t *testing.T) {
	const n = 100
	before := threads(t)
	errs := make(chan error, n)
	conns := make([]*pollConn, n)
	for i := range conns {
		_, c := acceptedPollConn(t, nil)
		conns[i] = c
		for { // fill the socket's buffer
			if _, err := c.write(make([]byte, 65536), false); err == errWouldBlock {
				break
			} else if err != nil {
				t.Fatal(err)
			}
		}
		c.SetWriteDeadline(time.Now().Add(time.Minute))
		go func() { _, err := c.Write([]byte("reply")); errs <- err }()
	}
	time.Sleep(500 * time.Millisecond) // every write is waiting
	if during := threads(t); during-before >= n/4 {
		t.Fatalf("%d writes waiting for room hold %d more threads", n, during-before)
	}
	for _, c := range conns {
		c.Close()
	}
	for range n {
		select {
		case err := <-errs:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("a waiting write ended by Close: %v, want net.ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not end a waiting write")
		}
	}
}

// Room the MTA makes between our write's EAGAIN and the wait is not
// missed: with the buffer drained before the wait begins, no sign of
// room follows, and the wait must see the room already there. (The
// poller may or may not have taken the socket's first event before the
// wait begins; a goroutine that keeps waking makes the first more
// likely, and the test tries many times.)
func TestWriteWaitingSeesRoomMadeBeforeTheWait(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Microsecond):
			}
		}
	}()
	var p workerPoller
	defer p.close()
	for i := range 300 {
		mta, c := acceptedPollConn(t, &p)
		filled := 0
		for {
			n, err := c.write(make([]byte, 65536), false)
			filled += n
			if err == errWouldBlock {
				break
			} else if err != nil {
				t.Fatal(err)
			}
		}
		if _, err := io.ReadFull(mta, make([]byte, filled)); err != nil {
			t.Fatal(err)
		}
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if n, err := c.writeWaiting([]byte("reply")); err != nil || n != 5 {
			t.Fatalf("try %d: write after the MTA made room: %d, %v", i, n, err)
		}
		mta.Close()
		c.finish()
	}
}
