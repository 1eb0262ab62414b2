package loadgen

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/d--j/go-milter"
)

// Options for a load run.
type Options struct {
	Network, Address string
	Corpus           []Message
	Concurrency      int   // milter connections at once
	Messages         int   // messages in all
	PerConnection    int   // messages per milter connection (an SMTP session); default 1
	ChunkSize        int   // body chunk size; default 65535 as Postfix sends
	PIDs             []int // the milter's processes, for their CPU time and memory (summed); none to skip
	Timeout          time.Duration
}

// Result of a run.
type Result struct {
	Messages       int
	Errors         int
	FirstError     string
	Elapsed        time.Duration
	Latencies      []time.Duration // per message, sorted
	Verdicts       map[string]int
	RepliesPerMsg  float64 // milter replies per message after option negotiation
	CPU            time.Duration
	RSSBeforeKB    int
	RSSAfterKB     int
	PeakRSSKB      int
	CorpusBytes    int64
	ProcessSampled bool
}

// Rate is messages per second.
func (r *Result) Rate() float64 { return float64(r.Messages) / r.Elapsed.Seconds() }

// Percentile of the per-message latency, p in [0,1].
func (r *Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	return r.Latencies[min(len(r.Latencies)-1, int(p*float64(len(r.Latencies))))]
}

// CPUPerMessage is the milter's CPU time per message over the run.
func (r *Result) CPUPerMessage() time.Duration {
	if r.Messages == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Messages)
}

// postfixConn writes the way Postfix's milter client does: packets go into
// a write buffer (Postfix's VSTREAM) that is flushed when a reply must be
// read, so events that need no reply travel together. It also counts reply
// packets: the client reads each packet's 4-byte length in one read.
type postfixConn struct {
	net.Conn
	w       *bufio.Writer
	replies *atomic.Int64
}

// postfixBufferSize is Postfix's VSTREAM buffer size.
const postfixBufferSize = 4096

func (c *postfixConn) Write(p []byte) (int, error) { return c.w.Write(p) }

func (c *postfixConn) Read(p []byte) (int, error) {
	if err := c.w.Flush(); err != nil {
		return 0, err
	}
	if len(p) == 4 {
		c.replies.Add(1)
	}
	return c.Conn.Read(p)
}

func (c *postfixConn) Close() error {
	c.w.Flush()
	return c.Conn.Close()
}

type countingDialer struct {
	d       net.Dialer
	replies *atomic.Int64
}

func (d *countingDialer) Dial(network, address string) (net.Conn, error) {
	c, err := d.d.Dial(network, address)
	if err != nil {
		return nil, err
	}
	return &postfixConn{Conn: c, w: bufio.NewWriterSize(c, postfixBufferSize), replies: d.replies}, nil
}

// Run replays the corpus against the milter.
func Run(o Options) (*Result, error) {
	if len(o.Corpus) == 0 {
		return nil, errors.New("empty corpus")
	}
	o.Concurrency = max(1, o.Concurrency)
	o.PerConnection = max(1, o.PerConnection)
	if o.ChunkSize <= 0 || o.ChunkSize > 65535 {
		o.ChunkSize = 65535
	}
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	var replies atomic.Int64
	client := milter.NewClient(o.Network, o.Address,
		milter.WithDialer(&countingDialer{d: net.Dialer{Timeout: 10 * time.Second}, replies: &replies}),
		milter.WithReadTimeout(o.Timeout), milter.WithWriteTimeout(o.Timeout))

	res := &Result{Verdicts: map[string]int{}}
	for _, m := range o.Corpus {
		res.CorpusBytes += int64(len(m.Body))
	}
	var before procSample
	if len(o.PIDs) > 0 {
		var err error
		if before, err = samplePIDs(o.PIDs); err != nil {
			return nil, err
		}
		res.ProcessSampled = true
	}

	var (
		next       atomic.Int64
		mu         sync.Mutex
		wg         sync.WaitGroup
		negotiated atomic.Int64
	)
	start := time.Now()
	for w := 0; w < o.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			verdicts := map[string]int{}
			var errs int
			var firstErr string
			for {
				first := int(next.Add(int64(o.PerConnection))) - o.PerConnection
				if first >= o.Messages {
					break
				}
				n := min(o.PerConnection, o.Messages-first)
				l, v, err := session(client, o, first, n)
				negotiated.Add(1)
				lat = append(lat, l...)
				for _, x := range v {
					verdicts[x]++
				}
				if err != nil {
					errs += n - len(v)
					if firstErr == "" {
						firstErr = err.Error()
					}
				}
			}
			mu.Lock()
			res.Latencies = append(res.Latencies, lat...)
			for k, c := range verdicts {
				res.Verdicts[k] += c
			}
			res.Errors += errs
			if res.FirstError == "" {
				res.FirstError = firstErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Messages = len(res.Latencies)
	slices.Sort(res.Latencies)
	if res.Messages > 0 {
		res.RepliesPerMsg = float64(replies.Load()-negotiated.Load()) / float64(res.Messages)
	}
	if len(o.PIDs) > 0 {
		after, err := samplePIDs(o.PIDs)
		if err != nil {
			return nil, err
		}
		res.CPU = after.cpu - before.cpu
		res.RSSBeforeKB, res.RSSAfterKB, res.PeakRSSKB = before.rssKB, after.rssKB, after.peakKB
	}
	return res, nil
}

// session runs n messages on one milter connection, as Postfix does for one
// SMTP session, and returns each message's latency and verdict.
func session(c *milter.Client, o Options, first, n int) ([]time.Duration, []string, error) {
	macros := milter.NewMacroBag()
	macros.Set(milter.MacroMTAFQDN, "mx.example.edu")
	begin := time.Now()
	s, err := c.Session(macros)
	if err != nil {
		return nil, nil, err
	}
	defer s.Close()
	if _, err := s.Conn("client.example.org", milter.FamilyInet, 40000, "192.0.2.10"); err != nil {
		return nil, nil, err
	}
	if _, err := s.Helo("client.example.org"); err != nil {
		return nil, nil, err
	}
	var (
		lat      []time.Duration
		verdicts []string
	)
	for i := 0; i < n; i++ {
		m := &o.Corpus[(first+i)%len(o.Corpus)]
		macros.Set(milter.MacroQueueId, fmt.Sprintf("Q%X", first+i))
		v, err := transaction(s, m, o.ChunkSize)
		if err != nil {
			return lat, verdicts, err
		}
		lat = append(lat, time.Since(begin))
		verdicts = append(verdicts, v)
		begin = time.Now()
	}
	return lat, verdicts, nil
}

func transaction(s *milter.ClientSession, m *Message, chunk int) (string, error) {
	rcpt := "user@example.edu"
	for _, f := range m.Fields {
		if strings.EqualFold(f.Name, "Delivered-To") {
			rcpt = strings.Trim(f.Value, "<> ")
		}
	}
	steps := []func() (*milter.Action, error){
		func() (*milter.Action, error) {
			return s.Mail("sender@example.org", "SIZE="+strconv.Itoa(len(m.Body)))
		},
		func() (*milter.Action, error) { return s.Rcpt(rcpt, "") },
		func() (*milter.Action, error) { return s.DataStart() },
	}
	for _, step := range steps {
		act, err := step()
		if err != nil {
			return "", err
		}
		if act.Type != milter.ActionContinue {
			return verdictName(act), s.Reset(nil)
		}
	}
	for _, f := range m.Fields {
		act, err := s.HeaderField(f.Name, f.Value, nil)
		if err != nil {
			return "", err
		}
		if act.Type != milter.ActionContinue {
			return verdictName(act), s.Reset(nil)
		}
	}
	if act, err := s.HeaderEnd(); err != nil || act.Type != milter.ActionContinue {
		if err != nil {
			return "", err
		}
		return verdictName(act), s.Reset(nil)
	}
	for i := 0; i < len(m.Body); i += chunk {
		act, err := s.BodyChunk(m.Body[i:min(i+chunk, len(m.Body))])
		if err != nil {
			return "", err
		}
		if act.Type != milter.ActionContinue {
			return verdictName(act), s.Reset(nil)
		}
	}
	_, act, err := s.End()
	if err != nil {
		return "", err
	}
	return verdictName(act), nil
}

func verdictName(a *milter.Action) string {
	switch a.Type {
	case milter.ActionAccept, milter.ActionContinue:
		return "accept"
	case milter.ActionDiscard:
		return "discard"
	case milter.ActionReject:
		return "reject"
	case milter.ActionTempFail:
		return "tempfail"
	case milter.ActionRejectWithCode:
		if len(a.SMTPReply) >= 9 {
			return a.SMTPReply[:9] // "550 5.7.0"
		}
		return strconv.Itoa(int(a.SMTPCode))
	}
	return fmt.Sprintf("action-%d", a.Type)
}

type procSample struct {
	cpu           time.Duration
	rssKB, peakKB int
}

// samplePIDs sums the samples of several processes (a milter that runs
// several instances).
func samplePIDs(pids []int) (procSample, error) {
	var sum procSample
	for _, pid := range pids {
		s, err := sampleProcess(pid)
		if err != nil {
			return sum, err
		}
		sum.cpu += s.cpu
		sum.rssKB += s.rssKB
		sum.peakKB += s.peakKB
	}
	return sum, nil
}

// sampleProcess reads a process's CPU time and memory from /proc.
func sampleProcess(pid int) (procSample, error) {
	var s procSample
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name (which may hold spaces) start at ")".
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) < 13 {
		return s, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticksPerSecond = 100 // USER_HZ on Linux
	s.cpu = time.Duration(utime+stime) * time.Second / ticksPerSecond
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		switch k {
		case "VmRSS":
			s.rssKB = n
		case "VmHWM":
			s.peakKB = n
		}
	}
	return s, nil
}
