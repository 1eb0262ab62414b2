package loadgen

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/d--j/go-milter"
)

// This file holds connections in a chosen state and measures what each
// costs the milter: memory per idle, mid-message and tarpitted connection.

// HoldState is where a held connection waits.
type HoldState int

const (
	// HoldSilent: connected, nothing sent (the milter waits for the
	// option negotiation, until its negotiation timeout).
	HoldSilent HoldState = iota
	// HoldIdle: negotiated, one 10 KB message done, waiting for the next
	// (an SMTP session between messages).
	HoldIdle
	// HoldMidMessage: in a message's body: the envelope, the header, its
	// end and one 65,535-byte body chunk sent, the next chunk not yet.
	HoldMidMessage
	// HoldTarpitted: the connect stage sent from a client the milter
	// tarpits, its answer awaited.
	HoldTarpitted
)

func (s HoldState) String() string {
	return [...]string{"silent", "idle", "mid-message", "tarpitted"}[s]
}

// HoldOptions say what to hold.
type HoldOptions struct {
	Network, Address string
	Count            int
	State            HoldState
	// Client is the address the connect stage names; for HoldTarpitted
	// one the milter tarpits (default 192.0.2.30).
	Client  string
	Timeout time.Duration // a reply's longest wait; default 60 s
}

// Held connections, open until Close.
type Held struct {
	conns    []net.Conn
	sessions []*milter.ClientSession // kept with their connections, mid-message
	waiting  sync.WaitGroup          // connect stages waiting in a tarpit
	Failed   int                     // connections that did not reach the state
	FirstErr error
}

// Hold opens o.Count connections and brings each to o.State. For
// HoldTarpitted it returns once every connection has negotiated; each
// sends its connect stage at once, and the milter holds it from then on
// (all but the first, with a rule of limit 1 whose count is not spent).
func Hold(o HoldOptions) (*Held, error) {
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	if o.Client == "" {
		o.Client = "192.0.2.30"
	}
	h := &Held{}
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		h.Failed++
		if h.FirstErr == nil {
			h.FirstErr = err
		}
		mu.Unlock()
	}
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				if o.State == HoldSilent {
					c, err := net.DialTimeout(o.Network, o.Address, 10*time.Second)
					if err != nil {
						fail(err)
						continue
					}
					mu.Lock()
					h.conns = append(h.conns, c)
					mu.Unlock()
					continue
				}
				s, c, err := dialSession(o.Network, o.Address, o.Timeout)
				if err != nil {
					fail(err)
					continue
				}
				if o.State == HoldTarpitted {
					mu.Lock()
					h.conns = append(h.conns, c)
					mu.Unlock()
					h.waiting.Add(1)
					go func() {
						defer h.waiting.Done()
						// Ends when the tarpit lets go or Close closes c.
						s.Conn("held.example.org", milter.FamilyInet, 40000, o.Client)
					}()
					continue
				}
				if err := holdMessage(s, o); err != nil {
					c.Close()
					fail(err)
					continue
				}
				mu.Lock()
				h.conns = append(h.conns, c)
				h.sessions = append(h.sessions, s)
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < o.Count; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	if h.Failed == o.Count && o.Count > 0 {
		h.Close()
		return nil, fmt.Errorf("no connection held: %w", h.FirstErr)
	}
	return h, nil
}

// holdMessage brings a session to the idle or mid-message state.
func holdMessage(s *milter.ClientSession, o HoldOptions) error {
	body := textBody(10_000)
	if o.State == HoldMidMessage {
		body = textBody(65535)
	}
	steps := []func() (*milter.Action, error){
		func() (*milter.Action, error) { return s.Conn("held.example.org", milter.FamilyInet, 40000, o.Client) },
		func() (*milter.Action, error) { return s.Helo("held.example.org") },
		func() (*milter.Action, error) { return s.Mail("sender@example.org", "") },
		func() (*milter.Action, error) { return s.Rcpt("user@example.edu", "") },
		s.DataStart,
		func() (*milter.Action, error) { return s.HeaderField("From", "<sender@example.org>", nil) },
		func() (*milter.Action, error) { return s.HeaderField("Subject", "held", nil) },
		s.HeaderEnd,
		func() (*milter.Action, error) { return s.BodyChunk(body) },
	}
	for _, step := range steps {
		act, err := step()
		if err != nil {
			return err
		}
		if act.Type != milter.ActionContinue {
			return fmt.Errorf("held connection refused: %s", verdictName(act))
		}
	}
	if o.State == HoldMidMessage {
		return nil
	}
	_, act, err := s.End()
	if err == nil && act.Type != milter.ActionAccept && act.Type != milter.ActionContinue {
		err = fmt.Errorf("held message refused: %s", verdictName(act))
	}
	return err
}

// textBody is n bytes of CRLF-ended text lines.
func textBody(n int) []byte {
	line := []byte(strings.Repeat("held connection text ", 4)[:82] + "\r\n")
	b := make([]byte, 0, n+len(line))
	for len(b) < n {
		b = append(b, line...)
	}
	return b[:n]
}

// Close ends every held connection.
func (h *Held) Close() {
	for _, c := range h.conns {
		c.Close()
	}
	h.waiting.Wait()
}

// Len is the number of connections held.
func (h *Held) Len() int { return len(h.conns) }

// MemorySample is what the milter holds at one moment.
type MemorySample struct {
	RSS        int64 // resident memory, bytes (the kernel's, or the metrics' when no pid)
	GoHeap     int64 // Go heap spans in use (go_memstats_heap_inuse_bytes)
	GoStack    int64 // goroutine stacks (go_memstats_stack_inuse_bytes)
	Goroutines int
	Sessions   int // mailguard_sessions_in_flight; -1 unknown
}

// Go is the Go runtime's memory in use: heap and stacks.
func (m MemorySample) Go() int64 { return m.GoHeap + m.GoStack }

// SampleMemory reads the process's resident memory (pid > 0) and, with a
// metrics URL (mailguard's /metrics), the Go runtime's figures.
func SampleMemory(pid int, metricsURL string) (MemorySample, error) {
	m := MemorySample{Sessions: -1}
	if pid > 0 {
		s, err := sampleProcess(pid)
		if err != nil {
			return m, err
		}
		m.RSS = int64(s.rssKB) << 10
	}
	if metricsURL == "" {
		return m, nil
	}
	resp, err := http.Get(metricsURL)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("%s: %s", metricsURL, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch name {
		case "go_memstats_heap_inuse_bytes":
			m.GoHeap = int64(v)
		case "go_memstats_stack_inuse_bytes":
			m.GoStack = int64(v)
		case "go_goroutines":
			m.Goroutines = int(v)
		case "mailguard_sessions_in_flight":
			m.Sessions = int(v)
		case "process_resident_memory_bytes":
			if pid <= 0 {
				m.RSS = int64(v)
			}
		}
	}
	return m, sc.Err()
}

// MemoryOptions for MeasureConnections.
type MemoryOptions struct {
	Network, Address string
	Count            int // connections held in each state
	PID              int
	MetricsURL       string
	// TarpitClient is a client address the milter tarpits at connect
	// (a ratelimit rule of limit 1 with a long tarpit); "" skips the
	// tarpitted state.
	TarpitClient string
	// Silent adds the silent state (connected, nothing sent) first.
	Silent bool
	// Settle is the wait before each sample; default 2 s (a tarpitted
	// session's watch starts after 1 s).
	Settle  time.Duration
	Timeout time.Duration
}

// StateCost is what one more connection in a state costs.
type StateCost struct {
	State         HoldState
	Held          int     // connections that reached the state
	Sessions      int     // the milter's sessions in flight with them, -1 unknown
	RSSPerConn    float64 // bytes
	GoPerConn     float64 // bytes of Go heap and stacks
	GoroutinesPer float64
}

// MemoryReport of MeasureConnections.
type MemoryReport struct {
	Base, Peak MemorySample
	States     []StateCost
}

// MeasureConnections holds Count idle connections, then Count more in
// mid-message, then (with TarpitClient) Count tarpitted ones, all open at
// once at the end, and reports what each state added per connection.
// With Silent, it then holds Count silent ones (the milter closes them
// at its negotiation timeout, so they come last).
func MeasureConnections(o MemoryOptions) (*MemoryReport, error) {
	if o.Count <= 0 {
		return nil, errors.New("no connections to measure")
	}
	if o.Settle <= 0 {
		o.Settle = 2 * time.Second
	}
	time.Sleep(o.Settle)
	prev, err := SampleMemory(o.PID, o.MetricsURL)
	if err != nil {
		return nil, err
	}
	rep := &MemoryReport{Base: prev}
	states := []HoldState{HoldIdle, HoldMidMessage}
	if o.TarpitClient != "" {
		states = append(states, HoldTarpitted)
	}
	if o.Silent { // last: the milter closes them at its negotiation timeout
		states = append(states, HoldSilent)
	}
	var held []*Held
	defer func() {
		for _, h := range held {
			h.Close()
		}
	}()
	for _, st := range states {
		client := ""
		if st == HoldTarpitted {
			client = o.TarpitClient
		}
		h, err := Hold(HoldOptions{Network: o.Network, Address: o.Address, Count: o.Count, State: st, Client: client, Timeout: o.Timeout})
		if err != nil {
			return rep, fmt.Errorf("%s: %w", st, err)
		}
		held = append(held, h)
		time.Sleep(o.Settle)
		s, err := SampleMemory(o.PID, o.MetricsURL)
		if err != nil {
			return rep, err
		}
		// Per connection the milter holds: refused ones cost nothing.
		n := float64(max(1, h.Len()))
		if s.Sessions >= 0 && prev.Sessions >= 0 {
			n = float64(max(1, s.Sessions-prev.Sessions))
		}
		rep.States = append(rep.States, StateCost{State: st, Held: h.Len(), Sessions: s.Sessions,
			RSSPerConn: float64(s.RSS-prev.RSS) / n, GoPerConn: float64(s.Go()-prev.Go()) / n,
			GoroutinesPer: float64(s.Goroutines-prev.Goroutines) / n})
		if h.Failed > 0 {
			return rep, fmt.Errorf("%s: %d of %d connections failed: %v", st, h.Failed, o.Count, h.FirstErr)
		}
		prev = s
	}
	rep.Peak = prev
	return rep, nil
}
