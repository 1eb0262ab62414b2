package pipeline

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
)

// closingFilter counts its closes.
type closingFilter struct {
	fakeFilter
	closes atomic.Int64
	err    error
}

func (f *closingFilter) Close() error {
	f.closes.Add(1)
	return f.err
}

func newClosing(name string) *closingFilter {
	return &closingFilter{fakeFilter: fakeFilter{name: name, open: new(atomic.Int64)}}
}

func quietEnv() Env { return Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil))} }

// A retired pipeline closes its filters when its last connection ends,
// not before, and only once.
func TestRetiredPipelineClosesAfterItsLastConnection(t *testing.T) {
	a, b := newClosing("a"), newClosing("b")
	p := New(quietEnv(), Member{Filter: a}, Member{Filter: &fakeFilter{name: "plain", open: new(atomic.Int64)}}, Member{Filter: b})
	c1 := p.Open(context.Background(), &Conn{Addr: "192.0.2.1"})
	c2 := p.Open(context.Background(), &Conn{Addr: "192.0.2.2"})
	p.Retire()
	if a.closes.Load() != 0 || p.Closed() {
		t.Fatal("closed while connections were open")
	}
	c1.Close()
	m, _ := c2.Begin(AllStages, AllModifications, "s@example.org", "")
	m.End()
	m.Close()
	if a.closes.Load() != 0 {
		t.Fatal("closed while a connection was open")
	}
	c2.Close()
	c2.Close()
	p.Retire()
	if a.closes.Load() != 1 || b.closes.Load() != 1 || !p.Closed() {
		t.Fatalf("closes a=%d b=%d, want 1 each", a.closes.Load(), b.closes.Load())
	}
	if p.Hold() {
		t.Fatal("a closed pipeline can be held")
	}
}

// A pipeline that is not retired is never closed, whatever its
// connections do; retired with nothing on it, it closes at once.
func TestPipelineClosesOnlyWhenRetired(t *testing.T) {
	a := newClosing("a")
	p := New(quietEnv(), Member{Filter: a})
	p.Open(context.Background(), &Conn{}).Close()
	if !p.Hold() {
		t.Fatal("a live pipeline cannot be held")
	}
	p.Release()
	if a.closes.Load() != 0 {
		t.Fatal("the current pipeline was closed")
	}
	p.Retire()
	if a.closes.Load() != 1 {
		t.Fatal("a retired pipeline without users was not closed")
	}
}

// A holder (a milter connection between SMTP sessions) keeps a retired
// pipeline open as a connection does.
func TestHoldKeepsARetiredPipeline(t *testing.T) {
	a := newClosing("a")
	p := New(quietEnv(), Member{Filter: a})
	if !p.Hold() {
		t.Fatal("cannot hold")
	}
	p.Retire()
	if a.closes.Load() != 0 {
		t.Fatal("closed while held")
	}
	p.Release()
	if a.closes.Load() != 1 {
		t.Fatal("not closed at the last release")
	}
}

// Close errors are joined and named; a failing filter does not keep the
// others open.
func TestCloseErrors(t *testing.T) {
	a, b := newClosing("a"), newClosing("b")
	a.err = errors.New("pool stuck")
	p := New(quietEnv(), Member{Filter: a}, Member{Filter: b})
	err := p.Close()
	if err == nil || err.Error() != "a: pool stuck" || b.closes.Load() != 1 {
		t.Fatalf("err %v, b closes %d", err, b.closes.Load())
	}
	if p.Close() != nil || a.closes.Load() != 1 {
		t.Fatal("closed twice")
	}
}

// Connections opening and closing while the pipeline is retired: the
// filters are closed exactly once, after every connection (-race).
func TestRetireRace(t *testing.T) {
	for range 50 {
		a := newClosing("a")
		p := New(quietEnv(), Member{Filter: a})
		var wg sync.WaitGroup
		var afterClose atomic.Int64
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if !p.Hold() {
					return
				}
				cn := p.Open(context.Background(), &Conn{})
				if a.closes.Load() != 0 {
					afterClose.Add(1)
				}
				cn.Close()
				p.Release()
			}()
		}
		p.Retire()
		wg.Wait()
		if a.closes.Load() != 1 || afterClose.Load() != 0 {
			t.Fatalf("closes %d, connections on a closed pipeline %d", a.closes.Load(), afterClose.Load())
		}
	}
}

func TestFilterByName(t *testing.T) {
	a := newClosing("a")
	p := New(quietEnv(), Member{Filter: a})
	if p.Filter("a") != a || p.Filter("b") != nil || (*Pipeline)(nil).Filter("a") != nil {
		t.Fatal("Filter lookup")
	}
}
