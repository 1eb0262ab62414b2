package loadgen

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/d--j/go-milter"
)

// This file drives slow connections: many milter connections open at
// once, each sending its packets spaced out, as slow SMTP clients pace
// an MTA's connect, HELO and envelope stages (and as a local peer could
// pace all of them). Unlike Run's connections, these write every packet
// as it comes (no VSTREAM buffer), so the milter sees each one arrive on
// its own, after a pause.

// SlowOptions for a run of slow connections.
type SlowOptions struct {
	Network, Address string
	Corpus           []Message
	Connections      int // open at once
	PerConnection    int // messages on each connection; default 3
	// GapMin and GapMax bound the pause before each packet (drawn
	// uniformly); defaults 100 ms and 1 s.
	GapMin, GapMax time.Duration
	// ChunkSize is the body chunk size; default 4096, so a message's body
	// is several packets, each after its pause.
	ChunkSize int
	// Expect, if set, gives the verdict each message must get ("accept",
	// "550 5.7.0", ...); a message answered otherwise is counted wrong.
	Expect  func(*Message) string
	Timeout time.Duration // a reply's longest wait; default 60 s
	Seed    uint64
}

// SlowResult of a run.
type SlowResult struct {
	Connections int // connections that negotiated
	Messages    int // messages answered
	Wrong       int // answered with another verdict than Expect's
	Errors      int // messages not answered (the connection failed)
	FirstError  string
	FirstWrong  string
	Verdicts    map[string]int
	Elapsed     time.Duration
	PeakOpen    int // connections open at once, at most
}

// SlowRun is a run under way.
type SlowRun struct {
	ready chan struct{}
	done  chan *SlowResult
}

// Ready is closed once every connection has negotiated (or failed to).
func (r *SlowRun) Ready() <-chan struct{} { return r.ready }

// Wait returns the result once every connection has ended.
func (r *SlowRun) Wait() *SlowResult { return <-r.done }

// StartSlow opens the connections, spread over the first GapMax, and
// sends their messages slowly.
func StartSlow(o SlowOptions) (*SlowRun, error) {
	if len(o.Corpus) == 0 {
		return nil, errors.New("empty corpus")
	}
	o.Connections = max(1, o.Connections)
	if o.PerConnection <= 0 {
		o.PerConnection = 3
	}
	if o.GapMax <= 0 {
		o.GapMin, o.GapMax = 100*time.Millisecond, time.Second
	}
	o.GapMin = min(o.GapMin, o.GapMax)
	if o.ChunkSize <= 0 || o.ChunkSize > 65535 {
		o.ChunkSize = 4096
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	run := &SlowRun{ready: make(chan struct{}), done: make(chan *SlowResult, 1)}
	res := &SlowResult{Verdicts: map[string]int{}}
	var (
		mu         sync.Mutex
		wg, ready  sync.WaitGroup
		open, peak atomic.Int64
	)
	client := milter.NewClient(o.Network, o.Address, milter.WithDialer(&net.Dialer{Timeout: 10 * time.Second}),
		milter.WithReadTimeout(o.Timeout), milter.WithWriteTimeout(o.Timeout))
	start := time.Now()
	for i := 0; i < o.Connections; i++ {
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(o.Seed, uint64(i)))
			gap := func() {
				time.Sleep(o.GapMin + time.Duration(rnd.Int64N(int64(o.GapMax-o.GapMin)+1)))
			}
			time.Sleep(time.Duration(rnd.Int64N(int64(o.GapMax) + 1))) // spread the opening
			s, err := client.Session(nil)
			ready.Done()
			var verdicts, wrong []string
			negotiated := err == nil
			if negotiated {
				now := open.Add(1)
				for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
				}
				verdicts, wrong, err = slowSession(s, o, i, gap)
				open.Add(-1)
				s.Close()
			}
			mu.Lock()
			defer mu.Unlock()
			if negotiated {
				res.Connections++
			}
			for _, v := range verdicts {
				res.Verdicts[v]++
			}
			res.Messages += len(verdicts)
			res.Wrong += len(wrong)
			if len(wrong) > 0 && res.FirstWrong == "" {
				res.FirstWrong = wrong[0]
			}
			if err != nil {
				res.Errors += o.PerConnection - len(verdicts)
				if res.FirstError == "" {
					res.FirstError = err.Error()
				}
			}
		}()
	}
	go func() { ready.Wait(); close(run.ready) }()
	go func() {
		wg.Wait()
		res.Elapsed = time.Since(start)
		res.PeakOpen = int(peak.Load())
		run.done <- res
	}()
	return run, nil
}

// slowSession sends one connection's messages, a pause before every
// packet, and returns their verdicts and the wrong ones described.
func slowSession(s *milter.ClientSession, o SlowOptions, conn int, gap func()) (verdicts, wrong []string, err error) {
	gap()
	if _, err := s.Conn("slow.example.org", milter.FamilyInet, 40000, "192.0.2.20"); err != nil {
		return nil, nil, err
	}
	gap()
	if _, err := s.Helo("slow.example.org"); err != nil {
		return nil, nil, err
	}
	verdicts = []string{}
	for i := 0; i < o.PerConnection; i++ {
		m := &o.Corpus[(conn*o.PerConnection+i)%len(o.Corpus)]
		v, err := transaction(s, m, o.ChunkSize, nil, gap)
		if err != nil {
			return verdicts, wrong, fmt.Errorf("%s: %w", m.Name, err)
		}
		v = shortVerdict(v) // the code and enhanced code, as the run's counts
		verdicts = append(verdicts, v)
		if o.Expect != nil {
			if want := o.Expect(m); v != want {
				wrong = append(wrong, fmt.Sprintf("%s: %s, want %s", m.Name, v, want))
			}
		}
	}
	return verdicts, wrong, nil
}

// captureDialer dials as net.Dialer does and keeps the connection, so a
// caller can write raw bytes on it or close it from another goroutine.
type captureDialer struct {
	d    net.Dialer
	conn net.Conn
}

func (c *captureDialer) Dial(network, address string) (net.Conn, error) {
	conn, err := c.d.Dial(network, address)
	c.conn = conn
	return conn, err
}

// dialSession opens one milter session with a dialer of its own, and
// returns its connection too.
func dialSession(network, address string, timeout time.Duration) (*milter.ClientSession, net.Conn, error) {
	d := &captureDialer{d: net.Dialer{Timeout: 10 * time.Second}}
	c := milter.NewClient(network, address, milter.WithDialer(d),
		milter.WithReadTimeout(timeout), milter.WithWriteTimeout(timeout))
	s, err := c.Session(nil)
	if err != nil {
		if d.conn != nil {
			d.conn.Close()
		}
		return nil, nil, err
	}
	return s, d.conn, nil
}
