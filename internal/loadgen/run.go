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

	// Plan, instead of Corpus, gives the SMTP sessions to replay: session
	// i of Sessions, each with its client, messages and their expected
	// verdicts. It is called from several goroutines.
	Plan     func(i int) Session
	Sessions int
	// SampleEvery, with PIDs, samples the milter's memory and open files
	// each time this many more messages are done (see Result.Samples).
	SampleEvery int
	// OnSample, if set, is told of each sample as it is taken (progress).
	OnSample func(Sample)
}

// Session is one SMTP session as the MTA shows it to the milter: one
// milter connection.
type Session struct {
	Client   string // the client's IP address; "" is 192.0.2.10
	Helo     string // "" is client.example.org
	Messages []Message
	// Parallel, when set, is the reply expected for a second connection
	// from the same client opened while this one is open (a concurrency
	// limit): it is checked after this session's HELO and counted as a
	// probe, not a message.
	Parallel string
}

// Stop says how a message ends before its end of data.
type Stop int

const (
	Complete Stop = iota // the whole message, then end of data
	Abort                // the MTA aborts the transaction halfway through the body (a client's RSET); the session goes on
	Hangup               // the connection drops halfway through the body; the session ends there
)

// Verdicts of messages that end without a reply to their end of data.
const (
	VerdictAborted = "aborted"
	VerdictHungUp  = "hung up"
)

// Result of a run.
type Result struct {
	Messages       int
	Errors         int
	FirstError     string
	Elapsed        time.Duration
	Latencies      []time.Duration // per message, sorted
	Verdicts       map[string]int  // by reply code and enhanced code ("550 5.7.0"), "accept"...
	RepliesPerMsg  float64         // milter replies per message after option negotiation
	CPU            time.Duration
	RSSBeforeKB    int
	RSSAfterKB     int
	PeakRSSKB      int
	CorpusBytes    int64
	ProcessSampled bool

	// Table counts messages (and probes) by class, expected and actual
	// reply; Wrong those whose reply was not the expected one (messages
	// without an expectation are never wrong).
	Table      map[Outcome]int
	Wrong      int
	FirstWrong string
	Probes     int
	// Samples of the milter's memory and open files: the first before the
	// run, then one every SampleEvery messages, the last after the run.
	Samples []Sample
}

// Outcome is a row of the verdict table.
type Outcome struct{ Class, Expect, Got string }

// Sample is the milter's memory and open files after some messages.
type Sample struct {
	Messages int
	RSSKB    int // resident memory (VmRSS)
	PeakKB   int // peak resident memory so far (VmHWM)
	FDs      int // open file descriptors
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

// hangup sends what is buffered and closes the socket without the
// protocol's QUIT.
func (c *postfixConn) hangup() {
	c.w.Flush()
	c.Conn.Close()
}

func (c *postfixConn) Close() error {
	c.w.Flush()
	return c.Conn.Close()
}

// countingDialer dials Postfix-like connections and remembers the last
// one, so that a session can hang up on the milter the way an MTA process
// that dies does (without the milter protocol's QUIT).
type countingDialer struct {
	d       net.Dialer
	replies *atomic.Int64
	last    *postfixConn
}

func (d *countingDialer) Dial(network, address string) (net.Conn, error) {
	c, err := d.d.Dial(network, address)
	if err != nil {
		return nil, err
	}
	d.last = &postfixConn{Conn: c, w: bufio.NewWriterSize(c, postfixBufferSize), replies: d.replies}
	return d.last, nil
}

// Run replays the corpus (or the plan) against the milter.
func Run(o Options) (*Result, error) {
	if o.Plan == nil && len(o.Corpus) == 0 {
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
	plan, sessions := o.Plan, o.Sessions
	if plan == nil {
		plan, sessions = corpusPlan(o)
	}
	r := &runner{o: o}

	res := &Result{Verdicts: map[string]int{}, Table: map[Outcome]int{}}
	for _, m := range o.Corpus {
		res.CorpusBytes += int64(len(m.Body))
	}
	if len(o.PIDs) > 0 {
		before, err := samplePIDs(o.PIDs)
		if err != nil {
			return nil, err
		}
		r.before = before
		res.ProcessSampled = true
		res.Samples = append(res.Samples, before.Sample(0))
	}
	stopSampling := r.sampleWhileRunning(res)

	var (
		next atomic.Int64
		mu   sync.Mutex
		wg   sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < o.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := newTally()
			for {
				i := int(next.Add(1)) - 1
				if i >= sessions {
					break
				}
				r.session(plan(i), i, t)
			}
			mu.Lock()
			t.addTo(res)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	stopSampling()
	res.Messages = len(res.Latencies)
	slices.Sort(res.Latencies)
	if res.Messages > 0 {
		res.RepliesPerMsg = float64(r.replies.Load()-r.negotiated.Load()) / float64(res.Messages)
	}
	if len(o.PIDs) > 0 {
		after, err := samplePIDs(o.PIDs)
		if err != nil {
			return nil, err
		}
		res.CPU = after.cpu - r.before.cpu
		res.RSSBeforeKB, res.RSSAfterKB, res.PeakRSSKB = r.before.rssKB, after.rssKB, after.peakKB
		res.Samples = append(res.Samples, after.Sample(res.Messages))
	}
	return res, nil
}

// corpusPlan cuts the corpus into sessions of PerConnection messages from
// one client, until Messages are sent.
func corpusPlan(o Options) (func(int) Session, int) {
	sessions := (o.Messages + o.PerConnection - 1) / o.PerConnection
	return func(i int) Session {
		first := i * o.PerConnection
		n := min(o.PerConnection, o.Messages-first)
		s := Session{Messages: make([]Message, n)}
		for j := range s.Messages {
			s.Messages[j] = o.Corpus[(first+j)%len(o.Corpus)]
		}
		return s
	}, sessions
}

type runner struct {
	o          Options
	replies    atomic.Int64
	negotiated atomic.Int64
	done       atomic.Int64 // messages done, for sampling
	before     procSample
}

// sampleWhileRunning samples the milter every SampleEvery messages until
// the returned function is called.
func (r *runner) sampleWhileRunning(res *Result) (stop func()) {
	if len(r.o.PIDs) == 0 || r.o.SampleEvery <= 0 {
		return func() {}
	}
	quit, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		next := int64(r.o.SampleEvery)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
			}
			if n := r.done.Load(); n >= next {
				if s, err := samplePIDs(r.o.PIDs); err == nil {
					res.Samples = append(res.Samples, s.Sample(int(n)))
					if r.o.OnSample != nil {
						r.o.OnSample(s.Sample(int(n)))
					}
				}
				next = (n/int64(r.o.SampleEvery) + 1) * int64(r.o.SampleEvery)
			}
		}
	}()
	return func() { close(quit); <-finished }
}

// tally is one worker's share of the result.
type tally struct {
	lat        []time.Duration
	verdicts   map[string]int
	table      map[Outcome]int
	errs       int
	firstErr   string
	wrong      int
	firstWrong string
	probes     int
}

func newTally() *tally {
	return &tally{verdicts: map[string]int{}, table: map[Outcome]int{}}
}

func (t *tally) record(m *Message, got string, lat time.Duration) {
	t.lat = append(t.lat, lat)
	t.count(m, got)
}

// count puts the verdict in the table.
func (t *tally) count(m *Message, got string) {
	t.verdicts[shortVerdict(got)]++
	t.table[Outcome{m.Class, m.Expect, got}]++
	if m.Expect != "" && got != m.Expect {
		t.wrong++
		if t.firstWrong == "" {
			t.firstWrong = fmt.Sprintf("%s (%s): got %q, want %q", m.Name, m.Class, got, m.Expect)
		}
	}
}

func (t *tally) fail(n int, err error) {
	t.errs += n
	if t.firstErr == "" {
		t.firstErr = err.Error()
	}
}

func (t *tally) addTo(res *Result) {
	res.Latencies = append(res.Latencies, t.lat...)
	for k, c := range t.verdicts {
		res.Verdicts[k] += c
	}
	for k, c := range t.table {
		res.Table[k] += c
	}
	res.Errors += t.errs
	if res.FirstError == "" {
		res.FirstError = t.firstErr
	}
	res.Wrong += t.wrong
	if res.FirstWrong == "" {
		res.FirstWrong = t.firstWrong
	}
	res.Probes += t.probes
}

func (r *runner) client(d *countingDialer) *milter.Client {
	return milter.NewClient(r.o.Network, r.o.Address, milter.WithDialer(d),
		milter.WithReadTimeout(r.o.Timeout), milter.WithWriteTimeout(r.o.Timeout))
}

// session runs one SMTP session's messages on one milter connection, as
// Postfix does, and tallies each message's latency and verdict.
func (r *runner) session(plan Session, index int, t *tally) {
	defer func() { r.done.Add(int64(len(plan.Messages))) }()
	client, helo := plan.Client, plan.Helo
	if client == "" {
		client = "192.0.2.10"
	}
	if helo == "" {
		helo = "client.example.org"
	}
	family := milter.FamilyInet
	if strings.Contains(client, ":") {
		family = milter.FamilyInet6
	}
	macros := milter.NewMacroBag()
	macros.Set(milter.MacroMTAFQDN, "mx.example.edu")
	begin := time.Now()
	d := &countingDialer{d: net.Dialer{Timeout: 10 * time.Second}, replies: &r.replies}
	s, err := r.client(d).Session(macros)
	if err != nil {
		t.fail(len(plan.Messages), err)
		return
	}
	r.negotiated.Add(1)
	defer s.Close()
	act, err := s.Conn(helo, family, 40000, client)
	if err == nil && act.Type == milter.ActionContinue {
		act, err = s.Helo(helo)
	}
	if err != nil {
		t.fail(len(plan.Messages), err)
		return
	}
	if act.Type != milter.ActionContinue {
		// Refused at connect or HELO: the MTA refuses every message.
		for i := range plan.Messages {
			t.record(&plan.Messages[i], verdictName(act), time.Since(begin))
		}
		return
	}
	if plan.Parallel != "" {
		t.probes++
		t.count(&Message{Name: "parallel connection from " + client, Class: "parallel connection", Expect: plan.Parallel}, r.parallel(client, helo, family, macros))
	}
	for i := range plan.Messages {
		m := &plan.Messages[i]
		macros.Set(milter.MacroQueueId, fmt.Sprintf("Q%XN%X", index, i))
		v, err := transaction(s, m, r.o.ChunkSize, d.last, nil)
		if err != nil {
			t.fail(len(plan.Messages)-i, fmt.Errorf("%s: %w", m.Name, err))
			return
		}
		t.record(m, v, time.Since(begin))
		begin = time.Now()
		if m.Stop == Hangup {
			return
		}
	}
}

// parallel opens a second connection from the client and returns the
// reply to its connect.
func (r *runner) parallel(client, helo string, family milter.ProtoFamily, macros milter.Macros) string {
	d := &countingDialer{d: net.Dialer{Timeout: 10 * time.Second}, replies: &r.replies}
	s, err := r.client(d).Session(macros)
	if err != nil {
		return "error: " + err.Error()
	}
	r.negotiated.Add(1)
	defer s.Close()
	act, err := s.Conn(helo, family, 40001, client)
	if err != nil {
		return "error: " + err.Error()
	}
	return verdictName(act)
}

// transaction sends one message and returns its verdict: the reply that
// ended it, with the recipients refused before it when only some were.
// A message planned to stop early returns VerdictAborted or VerdictHungUp
// if the milter let it get that far. pause, if not nil, runs before every
// packet: a slow MTA.
func transaction(s *milter.ClientSession, m *Message, chunk int, conn *postfixConn, pause func()) (string, error) {
	if pause == nil {
		pause = func() {}
	}
	sender, rcpts := m.Sender, m.Rcpts
	if sender == "" {
		sender = "sender@example.org"
	}
	if len(rcpts) == 0 {
		rcpts = []string{"user@example.edu"}
		for _, f := range m.Fields {
			if strings.EqualFold(f.Name, "Delivered-To") {
				rcpts = []string{strings.Trim(f.Value, "<> ")}
			}
		}
	}
	refused := func(act *milter.Action) (string, error) {
		return verdictName(act), s.Abort(nil)
	}
	pause()
	act, err := s.Mail(sender, "SIZE="+strconv.Itoa(len(m.Body)))
	if err != nil {
		return "", err
	}
	if act.Type != milter.ActionContinue {
		return refused(act)
	}
	var rcptRefusals []string
	for _, rcpt := range rcpts {
		pause()
		act, err := s.Rcpt(rcpt, "")
		if err != nil {
			return "", err
		}
		switch act.Type {
		case milter.ActionContinue:
		case milter.ActionAccept, milter.ActionDiscard:
			return verdictName(act), s.Abort(nil)
		default:
			rcptRefusals = append(rcptRefusals, "rcpt "+verdictName(act))
		}
	}
	if len(rcptRefusals) == len(rcpts) {
		// Every recipient refused: the MTA ends the transaction.
		return strings.TrimPrefix(rcptRefusals[len(rcptRefusals)-1], "rcpt "), s.Abort(nil)
	}
	partial := func(v string) string { return strings.Join(append(rcptRefusals, v), "; ") }
	pause()
	if act, err := s.DataStart(); err != nil || act.Type != milter.ActionContinue {
		if err != nil {
			return "", err
		}
		v, err := refused(act)
		return partial(v), err
	}
	for _, f := range m.Fields {
		pause()
		act, err := s.HeaderField(f.Name, f.Value, nil)
		if err != nil {
			return "", err
		}
		if act.Type != milter.ActionContinue {
			v, err := refused(act)
			return partial(v), err
		}
	}
	pause()
	if act, err := s.HeaderEnd(); err != nil || act.Type != milter.ActionContinue {
		if err != nil {
			return "", err
		}
		v, err := refused(act)
		return partial(v), err
	}
	body := m.Body
	if m.Stop != Complete {
		body = body[:len(body)/2]
	}
	for i := 0; i < len(body); i += chunk {
		pause()
		act, err := s.BodyChunk(body[i:min(i+chunk, len(body))])
		if err != nil {
			return "", err
		}
		if act.Type != milter.ActionContinue {
			v, err := refused(act)
			return partial(v), err
		}
	}
	switch m.Stop {
	case Abort:
		return partial(VerdictAborted), s.Abort(nil)
	case Hangup:
		// The MTA dies: what it wrote reaches the milter, then the
		// socket closes without a word.
		if conn != nil {
			conn.hangup()
		}
		return partial(VerdictHungUp), nil
	}
	pause()
	_, act, err = s.End()
	if err != nil {
		return "", err
	}
	return partial(verdictName(act)), nil
}

// shortVerdict is a reply's code and enhanced code ("550 5.7.0"), for
// Result.Verdicts; other verdicts are themselves.
func shortVerdict(v string) string {
	if len(v) > 9 && v[0] >= '2' && v[0] <= '5' && v[3] == ' ' {
		return v[:9]
	}
	return v
}

// verdictName names the milter's reply: "accept", "reject", "tempfail",
// "discard", or the SMTP reply it gives ("550 5.7.0 VIRUS FOUND").
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
		if a.SMTPReply != "" {
			return strings.TrimRight(a.SMTPReply, "\r\n")
		}
		return strconv.Itoa(int(a.SMTPCode))
	}
	return fmt.Sprintf("action-%d", a.Type)
}

type procSample struct {
	cpu                time.Duration
	rssKB, peakKB, fds int
}

// Sample is the memory part of the sample.
func (s procSample) Sample(messages int) Sample {
	return Sample{Messages: messages, RSSKB: s.rssKB, PeakKB: s.peakKB, FDs: s.fds}
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
		sum.fds += s.fds
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
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	s.fds = len(fds)
	return s, nil
}
