package clamd

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// serveOK answers every stream on the connection clean.
func serveOK(c net.Conn) {
	for readStreamOK(c) {
	}
}

// hungClamd takes connections and reads what is sent, as a stopped clamd's
// kernel does, and answers nothing, a PING neither, until answer is set.
func hungClamd(t *testing.T, answer *atomic.Bool) Address {
	return fakeClamd(t, func(c net.Conn) {
		for {
			cmd, err := readCommand(c)
			switch {
			case err != nil:
				return
			case cmd == "zPING" && answer.Load():
				c.Write([]byte("PONG\x00"))
				return
			case cmd == "zPING":
				time.Sleep(time.Minute)
				return
			case cmd == "zINSTREAM":
				if _, err := readStream2(c); err != nil {
					return
				}
				if !answer.Load() {
					time.Sleep(time.Minute)
					return
				}
				c.Write([]byte("1: stream: OK\x00"))
			}
		}
	})
}

// readStream2 reads an INSTREAM's chunks, its command read already.
func readStream2(c net.Conn) (int, error) {
	n := 0
	var buf [64 << 10]byte
	for {
		var size [4]byte
		if _, err := c.Read(size[:]); err != nil {
			return n, err
		}
		m := int(size[0])<<24 | int(size[1])<<16 | int(size[2])<<8 | int(size[3])
		if m == 0 {
			return n, nil
		}
		for m > 0 {
			k, err := c.Read(buf[:min(m, len(buf))])
			if err != nil {
				return n, err
			}
			m -= k
			n += k
		}
	}
}

// clock is a settable clock for the pool, safe for its probes.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// With one clamd's connections all in use, a stream goes to another
// that has one free, without waiting; with every one in use, it waits
// for whichever frees first.
func TestBusyServerPassedOver(t *testing.T) {
	a, b := fakeClamd(t, serveOK), fakeClamd(t, serveOK)
	p := NewPool([]Address{a, b}, PoolOptions{MaxConns: 1})
	open := func(ctx context.Context) (*Stream, error) {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return p.Open(ctx)
	}
	s1, err := open(ctx) // a, in turn
	if err != nil || s1.Server() != a {
		t.Fatalf("first stream: %v %v", s1, err)
	}
	s2, err := open(ctx) // b, in turn
	if err != nil || s2.Server() != b {
		t.Fatalf("second stream: %v %v", s2, err)
	}
	s2.Close()
	// a's turn again, but a is busy: b, at once.
	s3, err := open(ctx)
	if err != nil {
		t.Fatalf("with b free, a stream waited for busy a: %v", err)
	}
	if s3.Server() != b {
		t.Fatalf("third stream went to %s", s3.Server())
	}
	// Both busy: the next waits, starting its turn at b, and takes a
	// when a frees.
	got := make(chan error, 1)
	var s4 *Stream
	go func() {
		var err error
		s4, err = open(ctx)
		got <- err
	}()
	waitUntil(t, "a waiting stream", func() bool { busy, _ := p.Connections(); return busy == 2 })
	s1.Close()
	if err := <-got; err != nil {
		t.Fatalf("a stream waited for b while a freed: %v", err)
	}
	if s4.Server() != a {
		t.Fatalf("fourth stream went to %s", s4.Server())
	}
	s3.Close()
	s4.Close()
	if busy, _ := p.Connections(); busy != 0 {
		t.Fatalf("after closing: %d busy", busy)
	}
}

// A kept idle session is a connection to clamd like a busy one: the
// two together stay within MaxConns.
func TestIdleSessionsCountAgainstMaxConns(t *testing.T) {
	var open, most atomic.Int32
	addr := fakeClamd(t, func(c net.Conn) {
		n := open.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		defer open.Add(-1)
		serveOK(c)
	})
	const max = 3
	p := NewPool([]Address{addr}, PoolOptions{MaxConns: max})
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := p.Open(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			defer st.Close()
			st.Write(ctx, []byte("data"))
			if i%5 != 0 { // some abandoned midway
				st.Result(ctx)
			}
			if busy, idle := p.Connections(); busy+idle > max {
				t.Errorf("%d busy and %d idle connections, over %d", busy, idle, max)
			}
		}()
	}
	wg.Wait()
	if busy, idle := p.Connections(); busy != 0 || idle > max {
		t.Fatalf("at rest: %d busy, %d idle", busy, idle)
	}
}

// A clamd that takes the stream and never answers is left out: at the
// stream's deadline, or sooner when it does not answer a PING while the
// verdict is slow. A stream the MTA gave up (cancelled, not timed out)
// says nothing of clamd.
func TestHungServerLeftOut(t *testing.T) {
	var answer atomic.Bool
	hung, live := hungClamd(t, &answer), fakeClamd(t, serveOK)
	scan := func(p *Pool, ctx context.Context) (Address, error) {
		st, err := p.Open(ctx)
		if err != nil {
			return Address{}, err
		}
		defer st.Close()
		st.Write(ctx, []byte("data"))
		_, err = st.Result(ctx)
		return st.Server(), err
	}

	t.Run("cancelled", func(t *testing.T) {
		p := NewPool([]Address{hung}, PoolOptions{SlowVerdict: time.Hour})
		cctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(50*time.Millisecond, cancel)
		if _, err := scan(p, cctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
		if d := p.Down(); len(d) != 0 {
			t.Fatalf("a cancelled stream left out %v", d)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		p := NewPool([]Address{hung, live}, PoolOptions{SlowVerdict: time.Hour})
		tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		if srv, err := scan(p, tctx); srv != hung || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v from %v", err, srv)
		}
		if d := p.Down(); len(d) != 1 || d[0] != hung {
			t.Fatalf("left out %v, want the hung clamd", d)
		}
		for range 4 {
			if srv, err := scan(p, ctx); srv != live || err != nil {
				t.Fatalf("next stream: %v on %v", err, srv)
			}
		}
	})
	t.Run("slow verdict, no PING", func(t *testing.T) {
		clk := &clock{now: time.Unix(1000, 0)}
		p := NewPool([]Address{hung, live}, PoolOptions{SlowVerdict: 50 * time.Millisecond, DialTimeout: 200 * time.Millisecond, Now: clk.Now})
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		done := make(chan error, 1)
		go func() { _, err := scan(p, wctx); done <- err }() // hung, in turn
		waitUntil(t, "the hung clamd left out", func() bool { return len(p.Down()) == 1 })
		// Meanwhile the next streams go to the other.
		for range 4 {
			if srv, err := scan(p, ctx); srv != live || err != nil {
				t.Fatalf("next stream: %v on %v", err, srv)
			}
		}
		cancel()
		<-done

		// Its time out over, it gets no message until it answers a PING.
		clk.Add(time.Minute)
		for range 4 {
			if srv, err := scan(p, ctx); srv != live || err != nil {
				t.Fatalf("after its time out: %v on %v", err, srv)
			}
		}
		waitUntil(t, "the failed PING", func() bool {
			p.mu.Lock()
			defer p.mu.Unlock()
			return !p.servers[0].probing && clk.Now().Before(p.servers[0].downUntil)
		})
		answer.Store(true)
		clk.Add(time.Minute)
		scan(p, ctx) // sets off the PING
		waitUntil(t, "the clamd back", func() bool { return len(p.Down()) == 0 })
		seen := map[Address]bool{}
		for range 4 {
			srv, err := scan(p, ctx)
			if err != nil {
				t.Fatal(err)
			}
			seen[srv] = true
		}
		if !seen[hung] || !seen[live] {
			t.Fatalf("streams went to %v, want both", seen)
		}
	})
}
