// The raw accept these tests check is built only without the race
// detector (its build accepts with net's Accept); scripts/test runs this
// package once without it.

//go:build !race

package milterdoor

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/pipeline"
)

func newTestDoor(t *testing.T) *Door {
	t.Helper()
	p := pipeline.New(pipeline.Env{Log: slog.New(slog.DiscardHandler), Now: time.Now}, pipeline.Member{Filter: &countingFilter{}})
	return New(p, slog.New(slog.DiscardHandler), Options{})
}

// oneMessage sends a message through the door at addr and wants it
// accepted.
func oneMessage(t *testing.T, addr string) {
	t.Helper()
	s, err := milter.NewClient("tcp", addr).Session(milter.NewMacroBag())
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
		func() (*milter.Action, error) { return s.HeaderEnd() },
		func() (*milter.Action, error) { return s.BodyChunk([]byte("x\r\n")) },
	} {
		if _, err := step(); err != nil {
			t.Fatal(err)
		}
	}
	if _, act, err := s.End(); err != nil || act.Type != milter.ActionAccept {
		t.Fatalf("end of message: %+v, %v", act, err)
	}
}

// dialRefused reports whether nothing listens at addr any more: the
// accepter's duplicate of the listening socket would keep the port open.
func dialRefused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return true
	}
	c.Close()
	return false
}

// Shutdown closes the listening socket for good, the descriptor the door
// accepts on included: a restarted daemon can listen on the port again
// and the MTA is refused meanwhile, not left in a backlog.
func TestShutdownClosesTheListeningSocket(t *testing.T) {
	d := newTestDoor(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := newAccepter(ln).(*rawAccepter); ok {
		a.release()
	} else {
		t.Fatal("a TCP listener is not accepted with raw calls")
	}
	served := make(chan error, 1)
	go func() { served <- d.Serve(ln) }()
	oneMessage(t, ln.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve after Shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("Serve still accepting after Shutdown")
	}
	if !dialRefused(ln.Addr().String()) {
		t.Error("the port still takes connections after Shutdown")
	}
	ln2, err := net.Listen("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("the port cannot be listened on again: %v", err)
	}
	ln2.Close()
}

// A listener its owner closes under a serving door ends Serve with
// net.ErrClosed, as net's Accept would, once the next connection comes
// (the wait is on the duplicate, which the owner's Close does not end),
// and the port is closed then.
func TestServeEndsWhenItsListenerIsClosed(t *testing.T) {
	d := newTestDoor(t)
	defer d.Shutdown(context.Background())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- d.Serve(ln) }()
	oneMessage(t, ln.Addr().String())
	ln.Close()
	dialRefused(ln.Addr().String()) // wakes the accepter, if the port still listens
	select {
	case err := <-served:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Serve = %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still accepting after its listener was closed")
	}
	if !dialRefused(ln.Addr().String()) {
		t.Error("the port still takes connections")
	}
}
