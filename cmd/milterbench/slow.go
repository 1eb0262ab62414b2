package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"mailguard/internal/listen"
	"mailguard/internal/loadgen"
)

const slowUsage = `milterbench slow: many slow connections, memory per connection, slow-loris peers.

  milterbench slow load   -milter ADDR -corpus DIR [-c 1000] [-per-conn 3] [-gap-min 100ms] [-gap-max 1s]
                          [-reject LINE] [-fast-c 4] [-fast-n 200] [-pid PID] [-max-ratio F] [-max-per-conn BYTES]
      N slow connections at once (a pause before every packet), fast connections
      before, during and after them: verdicts, the milter's memory, the fast
      connections' latency with and without the slow ones.
  milterbench slow memory -milter ADDR -n 1000 [-pid PID] [-metrics URL] [-tarpit-client ADDR]
      N idle, then N mid-message, then N tarpitted, then N silent connections
      held at once: what each adds to the milter's memory.
  milterbench slow loris  -milter ADDR -corpus DIR [-n 1] [-gap 2s] [-limit 15m] [-fast-c 2]
      slow-loris peers (a byte every gap) in the negotiation, mid-packet and
      mid-body, and one sending a whole 1-byte body packet every gap, with
      fast connections meanwhile: when the milter closes each.
`

func slow(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, slowUsage)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, slowUsage)
		return 0
	case "load":
		return slowLoad(args[1:], stdout, stderr)
	case "memory":
		return slowMemory(args[1:], stdout, stderr)
	case "loris":
		return slowLoris(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "milterbench slow: unknown mode %q (want load, memory or loris)\n", args[0])
	return 2
}

// milterAddr turns -milter into a network and address to dial.
func milterAddr(v string, stderr io.Writer) (string, string, bool) {
	a, err := listen.Parse(v)
	if err != nil {
		fmt.Fprintf(stderr, "milterbench: -milter %v\n", err)
		return "", "", false
	}
	return map[string]string{"tcp4": "tcp", "tcp6": "tcp", "unix": "unix"}[a.Network], a.Address, true
}

// fastTraffic runs batches of ordinary connections (one message each)
// until stop is closed, at least once, and pools their results.
type fastTraffic struct {
	o        loadgen.Options
	pause    time.Duration // between batches
	lat      []time.Duration
	verdicts map[string]int
	errors   int
	firstErr string
}

func (f *fastTraffic) batch() error {
	r, err := loadgen.Run(f.o)
	if err != nil {
		return err
	}
	f.lat = append(f.lat, r.Latencies...)
	for k, v := range r.Verdicts {
		f.verdicts[k] += v
	}
	f.errors += r.Errors
	if f.firstErr == "" {
		f.firstErr = r.FirstError
	}
	return nil
}

func (f *fastTraffic) until(stop <-chan struct{}) error {
	for {
		if err := f.batch(); err != nil {
			return err
		}
		select {
		case <-stop:
			return nil
		case <-time.After(f.pause):
		}
	}
}

func (f *fastTraffic) percentile(p float64) time.Duration {
	l := slices.Sorted(slices.Values(f.lat))
	if len(l) == 0 {
		return 0
	}
	return l[min(len(l)-1, int(p*float64(len(l))))]
}

func newFast(network, addr string, corpus []loadgen.Message, conc, n int) *fastTraffic {
	return &fastTraffic{o: loadgen.Options{Network: network, Address: addr, Corpus: corpus, Concurrency: conc,
		Messages: n, PerConnection: 1, Timeout: 60 * time.Second}, verdicts: map[string]int{}}
}

func verdictList(v map[string]int) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(v)) {
		fmt.Fprintf(&b, " %s=%d", k, v[k])
	}
	return b.String()
}

// expectFor is the verdict a message should get: refused if it holds
// line, else accepted; nil without a line.
func expectFor(line string) func(*loadgen.Message) string {
	if line == "" {
		return nil
	}
	return func(m *loadgen.Message) string {
		if bytes.Contains(m.Body, []byte(line)) {
			return "550 5.7.0"
		}
		return "accept"
	}
}

// memoryWatch samples the milter's memory every interval until stopped
// and keeps the highest sample.
type memoryWatch struct {
	mu   sync.Mutex
	peak loadgen.MemorySample
	stop chan struct{}
	done chan struct{}
}

func watchMemory(pid int, url string, every time.Duration) *memoryWatch {
	w := &memoryWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if s, err := loadgen.SampleMemory(pid, url); err == nil {
				w.mu.Lock()
				if s.RSS > w.peak.RSS {
					w.peak.RSS = s.RSS
				}
				if s.Go() > w.peak.Go() {
					w.peak.GoHeap, w.peak.GoStack = s.GoHeap, s.GoStack
				}
				w.peak.Sessions = max(w.peak.Sessions, s.Sessions)
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// Peak is the highest sample so far.
func (w *memoryWatch) Peak() loadgen.MemorySample {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.peak
}

func (w *memoryWatch) Stop() loadgen.MemorySample {
	close(w.stop)
	<-w.done
	return w.peak
}

func slowLoad(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("slow load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("milter", "inet:127.0.0.1:8897", "the milter's `ADDRESS`")
	corpus := fs.String("corpus", "", "`DIR` of messages")
	conns := fs.Int("c", 1000, "slow connections open at once")
	per := fs.Int("per-conn", 3, "messages on each slow connection")
	gapMin := fs.Duration("gap-min", 100*time.Millisecond, "shortest pause before a packet")
	gapMax := fs.Duration("gap-max", time.Second, "longest pause before a packet")
	chunk := fs.Int("chunk", 4096, "body chunk size of the slow connections")
	reject := fs.String("reject", "", "messages holding this `LINE` must get 550 5.7.0, all others accept")
	fastC := fs.Int("fast-c", 4, "fast connections at once")
	fastN := fs.Int("fast-n", 200, "messages in each batch of fast connections")
	pid := fs.String("pid", "", "the milter's process `ID` or pid FILE, for its memory")
	metrics := fs.String("metrics", "", "the milter's metrics `URL` (mailguard's /metrics), for its Go memory and sessions")
	maxRatio := fs.Float64("max-ratio", 0, "fail if the fast connections' p99 with the slow ones exceeds this many times the p99 without (0: report only)")
	maxPerConn := fs.Int64("max-per-conn", 0, "fail if the milter's peak resident memory grew by more than this many `BYTES` per slow connection (0: report only)")
	slowOnly := fs.Duration("slow-only", 5*time.Second, "how long the slow connections run alone, for their memory, before the fast ones join")
	fastPause := fs.Duration("fast-pause", 250*time.Millisecond, "pause between batches of fast connections")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	network, address, ok := milterAddr(*addr, stderr)
	if !ok {
		return 2
	}
	msgs, pidN, code := corpusAndPID(*corpus, *pid, stderr)
	if code != 0 {
		return code
	}
	before := newFast(network, address, msgs, *fastC, *fastN)
	during := newFast(network, address, msgs, *fastC, *fastN)
	after := newFast(network, address, msgs, *fastC, *fastN)
	before.pause, during.pause, after.pause = *fastPause, *fastPause, *fastPause
	for range 3 {
		time.Sleep(before.pause)
		if err := before.batch(); err != nil {
			fmt.Fprintf(stderr, "milterbench slow: %v\n", err)
			return 1
		}
	}
	base, err := loadgen.SampleMemory(pidN, *metrics)
	if err != nil {
		fmt.Fprintf(stderr, "milterbench slow: %v\n", err)
		return 1
	}
	watch := watchMemory(pidN, *metrics, 250*time.Millisecond)
	run, err := loadgen.StartSlow(loadgen.SlowOptions{Network: network, Address: address, Corpus: msgs, Connections: *conns,
		PerConnection: *per, GapMin: *gapMin, GapMax: *gapMax, ChunkSize: *chunk, Expect: expectFor(*reject)})
	if err != nil {
		fmt.Fprintf(stderr, "milterbench slow: %v\n", err)
		return 1
	}
	<-run.Ready()
	// The slow connections alone for a while: what they hold (the fast
	// ones' garbage comes on top once they run).
	time.Sleep(*slowOnly)
	slowPeak := watch.Peak()
	finished := make(chan *loadgen.SlowResult, 1)
	stop := make(chan struct{})
	go func() { r := run.Wait(); close(stop); finished <- r }()
	if err := during.until(stop); err != nil {
		fmt.Fprintf(stderr, "milterbench slow: %v\n", err)
		return 1
	}
	res := <-finished
	peak := watch.Stop()
	for range 3 {
		time.Sleep(after.pause)
		if err := after.batch(); err != nil {
			fmt.Fprintf(stderr, "milterbench slow: %v\n", err)
			return 1
		}
	}

	fmt.Fprintf(stdout, "slow connections: %d negotiated, %d at once at most, %d messages in %s (%d per connection, a pause of %s to %s before each packet)\n",
		res.Connections, res.PeakOpen, res.Messages, res.Elapsed.Round(time.Millisecond), *per, *gapMin, *gapMax)
	fmt.Fprintf(stdout, "slow verdicts:%s; wrong %d; errors %d\n", verdictList(res.Verdicts), res.Wrong, res.Errors)
	without := append(slices.Clone(before.lat), after.lat...)
	wo := &fastTraffic{lat: without}
	fmt.Fprintf(stdout, "fast connections without the slow ones: %d messages, p50 %s p99 %s\n", len(without),
		wo.percentile(0.5).Round(time.Microsecond), wo.percentile(0.99).Round(time.Microsecond))
	fmt.Fprintf(stdout, "fast connections with the slow ones:    %d messages, p50 %s p99 %s\n", len(during.lat),
		during.percentile(0.5).Round(time.Microsecond), during.percentile(0.99).Round(time.Microsecond))
	r50 := ratio(during.percentile(0.5), wo.percentile(0.5))
	r99 := ratio(during.percentile(0.99), wo.percentile(0.99))
	fmt.Fprintf(stdout, "latency ratio with/without: p50 %.2f  p99 %.2f\n", r50, r99)
	fastErrs := before.errors + during.errors + after.errors
	fmt.Fprintf(stdout, "fast verdicts:%s; errors %d\n", verdictList(mergeVerdicts(before, during, after)), fastErrs)
	open := float64(max(1, res.PeakOpen))
	perConn := float64(peak.RSS-base.RSS) / open
	if pidN > 0 || *metrics != "" {
		fmt.Fprintf(stdout, "milter resident memory: %s before; %s with the slow connections alone (%.1f KB per slow connection); %s at the peak (%.1f KB per slow connection)\n",
			kb(base.RSS), kb(slowPeak.RSS), float64(slowPeak.RSS-base.RSS)/open/1024, kb(peak.RSS), perConn/1024)
		if *metrics != "" {
			fmt.Fprintf(stdout, "milter Go heap and stacks: %s before; %s with the slow connections alone; %s at the peak; %d sessions at most\n",
				kb(base.Go()), kb(slowPeak.Go()), kb(peak.Go()), peak.Sessions)
		}
	}
	failed := false
	if res.Errors > 0 || res.Wrong > 0 || res.Connections < *conns {
		fmt.Fprintf(stderr, "milterbench slow: %d of %d slow connections negotiated, %d messages failed, %d wrong; first error: %s; first wrong: %s\n",
			res.Connections, *conns, res.Errors, res.Wrong, res.FirstError, res.FirstWrong)
		failed = true
	}
	if fastErrs > 0 {
		fmt.Fprintf(stderr, "milterbench slow: %d fast messages failed; first error: %s%s%s\n", fastErrs, before.firstErr, during.firstErr, after.firstErr)
		failed = true
	}
	if *maxRatio > 0 && r99 > *maxRatio {
		fmt.Fprintf(stderr, "milterbench slow: p99 latency ratio %.2f over %.2f\n", r99, *maxRatio)
		failed = true
	}
	if *maxPerConn > 0 && (pidN > 0 || *metrics != "") && perConn > float64(*maxPerConn) {
		fmt.Fprintf(stderr, "milterbench slow: peak resident memory grew by %.0f bytes per slow connection, over %d\n", perConn, *maxPerConn)
		failed = true
	}
	if failed {
		return 1
	}
	return 0
}

func mergeVerdicts(fs ...*fastTraffic) map[string]int {
	out := map[string]int{}
	for _, f := range fs {
		for k, v := range f.verdicts {
			out[k] += v
		}
	}
	return out
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func kb(b int64) string { return fmt.Sprintf("%d kB", b>>10) }

// corpusAndPID reads -corpus (required) and -pid (optional, one process).
func corpusAndPID(corpus, pid string, stderr io.Writer) ([]loadgen.Message, int, int) {
	if corpus == "" {
		fmt.Fprintln(stderr, "milterbench slow: -corpus is required (make one with milterbench gen)")
		return nil, 0, 2
	}
	msgs, err := loadgen.LoadCorpus(corpus)
	if err != nil {
		fmt.Fprintf(stderr, "milterbench slow: %v\n", err)
		return nil, 0, 1
	}
	pidN, code := onePID(pid, stderr)
	return msgs, pidN, code
}

func onePID(pid string, stderr io.Writer) (int, int) {
	pids, err := parsePIDs(pid)
	if err != nil || len(pids) > 1 {
		fmt.Fprintf(stderr, "milterbench slow: -pid %q: want one process (%v)\n", pid, err)
		return 0, 2
	}
	if len(pids) == 0 {
		return 0, 0
	}
	return pids[0], 0
}

func slowMemory(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("slow memory", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("milter", "inet:127.0.0.1:8897", "the milter's `ADDRESS`")
	n := fs.Int("n", 1000, "connections held in each state")
	pid := fs.String("pid", "", "the milter's process `ID` or pid FILE, for its resident memory")
	metrics := fs.String("metrics", "", "the milter's metrics `URL`, for its Go memory and sessions")
	tarpit := fs.String("tarpit-client", "", "a client `ADDRESS` the milter tarpits at connect (none: no tarpitted state)")
	settle := fs.Duration("settle", 2*time.Second, "wait before each sample")
	silent := fs.Bool("silent", true, "also hold silent connections (connected, nothing sent), last")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	network, address, ok := milterAddr(*addr, stderr)
	if !ok {
		return 2
	}
	pidN, code := onePID(*pid, stderr)
	if code != 0 {
		return code
	}
	if pidN == 0 && *metrics == "" {
		fmt.Fprintln(stderr, "milterbench slow memory: -pid or -metrics is required")
		return 2
	}
	rep, err := loadgen.MeasureConnections(loadgen.MemoryOptions{Network: network, Address: address, Count: *n,
		PID: pidN, MetricsURL: *metrics, TarpitClient: *tarpit, Silent: *silent, Settle: *settle})
	if rep != nil {
		fmt.Fprintf(stdout, "milter memory before: %s resident, %s Go heap and stacks, %d goroutines\n", kb(rep.Base.RSS), kb(rep.Base.Go()), rep.Base.Goroutines)
		for _, s := range rep.States {
			fmt.Fprintf(stdout, "%-11s %5d held (%d sessions in the milter): %6.1f KB resident, %6.1f KB Go heap and stacks, %.1f goroutines per connection\n",
				s.State, s.Held, s.Sessions, s.RSSPerConn/1024, s.GoPerConn/1024, s.GoroutinesPer)
		}
		if len(rep.States) > 0 {
			fmt.Fprintf(stdout, "milter memory with all held: %s resident, %s Go heap and stacks\n", kb(rep.Peak.RSS), kb(rep.Peak.Go()))
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "milterbench slow memory: %v\n", err)
		return 1
	}
	return 0
}

func slowLoris(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("slow loris", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("milter", "inet:127.0.0.1:8897", "the milter's `ADDRESS`")
	corpus := fs.String("corpus", "", "`DIR` of messages for the fast connections")
	n := fs.Int("n", 1, "slow-loris peers of each kind")
	gap := fs.Duration("gap", 2*time.Second, "between a peer's bytes")
	limit := fs.Duration("limit", 15*time.Minute, "give a peer up after this long")
	fastC := fs.Int("fast-c", 2, "fast connections at once meanwhile")
	fastN := fs.Int("fast-n", 100, "messages in each batch of fast connections")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	network, address, ok := milterAddr(*addr, stderr)
	if !ok {
		return 2
	}
	msgs, _, code := corpusAndPID(*corpus, "", stderr)
	if code != 0 {
		return code
	}
	results := make(chan loadgen.LorisResult)
	for _, st := range loadgen.LorisStages {
		for range *n {
			go func() {
				results <- loadgen.Loris(loadgen.LorisOptions{Network: network, Address: address, Stage: st, Gap: *gap, Limit: *limit})
			}()
		}
	}
	type summary struct {
		closed, open, failed int
		first, last          time.Duration
		err                  error
	}
	sums := map[loadgen.LorisStage]*summary{}
	fast := newFast(network, address, msgs, *fastC, *fastN)
	fast.pause = time.Second // the peers may take minutes: ordinary traffic, not a flood
	stop := make(chan struct{})
	fastDone := make(chan error, 1)
	go func() { fastDone <- fast.until(stop) }()
	for range len(loadgen.LorisStages) * *n {
		r := <-results
		s := sums[r.Stage]
		if s == nil {
			s = &summary{}
			sums[r.Stage] = s
		}
		switch {
		case r.Err != nil:
			s.failed++
			s.err = r.Err
		case r.Closed:
			if s.closed == 0 || r.After < s.first {
				s.first = r.After
			}
			s.last = max(s.last, r.After)
			s.closed++
		default:
			s.open++
		}
	}
	close(stop)
	if err := <-fastDone; err != nil {
		fmt.Fprintf(stderr, "milterbench slow loris: %v\n", err)
		return 1
	}
	for _, st := range loadgen.LorisStages {
		s := sums[st]
		if s.closed > 0 {
			fmt.Fprintf(stdout, "%-13s %d closed by the milter after %s to %s; %d still open after %s", st, s.closed,
				s.first.Round(100*time.Millisecond), s.last.Round(100*time.Millisecond), s.open, *limit)
		} else {
			fmt.Fprintf(stdout, "%-13s none closed by the milter; %d still open after %s", st, s.open, *limit)
		}
		if s.failed > 0 {
			fmt.Fprintf(stdout, "; %d did not reach the stage: %v", s.failed, s.err)
		}
		fmt.Fprintln(stdout)
	}
	fmt.Fprintf(stdout, "fast connections meanwhile: %d messages, p50 %s p99 %s;%s; errors %d\n", len(fast.lat),
		fast.percentile(0.5).Round(time.Microsecond), fast.percentile(0.99).Round(time.Microsecond), verdictList(fast.verdicts), fast.errors)
	if fast.errors > 0 {
		fmt.Fprintf(stderr, "milterbench slow loris: %d fast messages failed; first error: %s\n", fast.errors, fast.firstErr)
		return 1
	}
	return 0
}
