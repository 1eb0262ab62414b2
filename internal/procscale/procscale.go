// Package procscale runs the Go scheduler on one processor while the
// daemon uses little CPU, and on every processor it may use once it
// needs more (GOMAXPROCS).
//
// A milter does a few microseconds of work per packet and is idle in
// between. With a processor left idle, the runtime wakes a second thread
// whenever a goroutine becomes runnable (an accepted connection handed to
// its worker, two packets at once), and that thread mostly finds nothing
// to do and sleeps again: behind a real Postfix, a quarter of the
// daemon's CPU per message went to those thread switches. On one
// processor the same work costs none of them. A daemon that uses more
// than half a CPU gets every processor within a tenth of a second; it
// returns to one after five seconds well below that.
package procscale

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"
)

// Thresholds, in CPUs used by the process (CPU seconds per second).
const (
	// widenAbove is the use over one interval, on one processor, past
	// which the scheduler gets them all at once: at half a CPU, work
	// starts to queue behind work.
	widenAbove = 0.5
	// narrowBelow is the average use over the last narrowAfter intervals
	// under which it goes back to one.
	narrowBelow = 0.25
	interval    = 100 * time.Millisecond
	narrowAfter = 50 // intervals: 5 s
)

// Scaler decides the processor count from the CPU use it is shown, one
// interval at a time.
type Scaler struct {
	widest, procs int
	recent        [narrowAfter]float64 // use in the last intervals, a ring
	next, filled  int
}

// New returns a scaler that starts on one processor and widens to
// widest.
func New(widest int) *Scaler { return &Scaler{widest: widest, procs: 1} }

// Procs is the processor count the scaler wants now.
func (s *Scaler) Procs() int { return s.procs }

// Observe takes the CPUs the process used over the last interval and
// returns the processor count for the next.
func (s *Scaler) Observe(used float64) int {
	s.recent[s.next] = used
	s.next = (s.next + 1) % len(s.recent)
	s.filled = min(s.filled+1, len(s.recent))
	switch {
	case s.procs == 1 && used > widenAbove:
		s.procs, s.filled = s.widest, 0 // a whole window before narrowing again
	case s.procs > 1 && s.filled == len(s.recent) && s.average() < narrowBelow:
		s.procs = 1
	}
	return s.procs
}

func (s *Scaler) average() float64 {
	sum := 0.0
	for _, u := range s.recent {
		sum += u
	}
	return sum / float64(len(s.recent))
}

// Enabled reports whether the daemon should scale: not when GOMAXPROCS
// is set in its environment (the postmaster chose), nor on one processor.
func Enabled() bool {
	return os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) > 1
}

// Run scales the scheduler until ctx ends, then gives it every processor
// back. It returns at once where scaling is not Enabled.
func Run(ctx context.Context, log *slog.Logger) {
	if !Enabled() {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	run(ctx, log, t.C, cpuTime)
}

// run scales at every tick, from the process's CPU time (cpu) and the
// ticks' times.
func run(ctx context.Context, log *slog.Logger, tick <-chan time.Time, cpu func() time.Duration) {
	widest := runtime.GOMAXPROCS(0)
	s := New(widest)
	set(s.Procs(), widest)
	log.Debug("scheduler: one processor while the daemon is idle, all when it is busy", "processors", 1, "max_processors", widest)
	defer runtime.SetDefaultGOMAXPROCS()
	last, lastCPU := time.Now(), cpu()
	for {
		var now time.Time
		select {
		case <-ctx.Done():
			return
		case now = <-tick:
		}
		used := 0.0
		c := cpu()
		if d := now.Sub(last); d > 0 {
			used = float64(c-lastCPU) / float64(d)
		}
		last, lastCPU = now, c
		before := s.Procs()
		if n := s.Observe(used); n != before {
			set(n, widest)
			log.Debug("scheduler: processors changed", "processors", n, "cpu_used", strconv.FormatFloat(used, 'f', 2, 64))
		}
	}
}

// set gives the scheduler n processors; widest is the runtime's default,
// which it keeps following (a changed CPU limit) when widened.
func set(n, widest int) {
	if n >= widest {
		runtime.SetDefaultGOMAXPROCS()
		return
	}
	runtime.GOMAXPROCS(n)
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
