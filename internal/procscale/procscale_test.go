package procscale

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"
)

// The scaler widens at once when one processor is not enough, and goes
// back to one only when a whole window of intervals was quiet on
// average.
func TestScalerWidensAtOnceAndNarrowsSlowly(t *testing.T) {
	s := New(8)
	if s.Procs() != 1 {
		t.Fatalf("starts on %d processors, want 1", s.Procs())
	}
	for _, used := range []float64{0, 0.1, 0.3, 0.5} {
		if n := s.Observe(used); n != 1 {
			t.Fatalf("%.2f CPUs used: %d processors, want 1", used, n)
		}
	}
	if n := s.Observe(0.6); n != 8 {
		t.Fatalf("0.6 CPUs used on one processor: %d processors, want all 8", n)
	}
	// Quiet, but not a whole window yet.
	for i := range narrowAfter - 1 {
		if n := s.Observe(0.1); n != 8 {
			t.Fatalf("quiet interval %d of %d: narrowed already", i+1, narrowAfter)
		}
	}
	if n := s.Observe(0.1); n != 1 {
		t.Fatalf("after %d quiet intervals: %d processors, want 1", narrowAfter, n)
	}
	// Busy on average, though with quiet intervals: stays wide.
	s.Observe(0.9)
	for i := range 3 * narrowAfter {
		used := 0.05
		if i%2 == 0 {
			used = 0.6
		}
		if n := s.Observe(used); n != 8 {
			t.Fatalf("interval %d, a third of a CPU on average: narrowed", i)
		}
	}
	// A short burst within a quiet window does not keep it wide.
	for s.Procs() != 1 {
		s.Observe(0.05)
	}
	s.Observe(0.9)
	for i := range narrowAfter {
		used := 0.05
		if i == narrowAfter/2 {
			used = 2
		}
		s.Observe(used)
	}
	if n := s.Procs(); n != 1 {
		t.Fatalf("one busy interval in a quiet window: %d processors, want 1", n)
	}
}

// Where the postmaster set GOMAXPROCS, the daemon leaves it alone.
func TestEnvironmentDisablesScaling(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Fatal("this test needs a machine with at least 2 processors")
	}
	t.Setenv("GOMAXPROCS", "2")
	if Enabled() {
		t.Fatal("scaling enabled although GOMAXPROCS is set")
	}
}

// Run narrows the scheduler to one processor while the process is idle
// and gives every processor back when it ends.
func TestRunNarrowsAndRestores(t *testing.T) {
	widest := runtime.GOMAXPROCS(0)
	if widest < 2 {
		t.Fatal("this test needs a machine with at least 2 processors")
	}
	t.Setenv("GOMAXPROCS", "") // as if unset
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, slog.New(slog.DiscardHandler)); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.GOMAXPROCS(0) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("still %d processors while idle", runtime.GOMAXPROCS(0))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if n := runtime.GOMAXPROCS(0); n != widest {
		t.Fatalf("%d processors after Run, want %d back", n, widest)
	}
}

// Run measures the process's CPU use between ticks: a busy interval
// widens the scheduler, a quiet window narrows it again.
func TestRunFollowsTheCPUUse(t *testing.T) {
	widest := runtime.GOMAXPROCS(0)
	if widest < 2 {
		t.Fatal("this test needs a machine with at least 2 processors")
	}
	var mu sync.Mutex
	var cpu time.Duration
	cpuTime := func() time.Duration { mu.Lock(); defer mu.Unlock(); return cpu }
	tick := make(chan time.Time)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	start := time.Now()
	go func() { run(ctx, slog.New(slog.DiscardHandler), tick, cpuTime); close(done) }()
	now := start
	step := func(used time.Duration) {
		now = now.Add(interval)
		mu.Lock()
		cpu += used
		mu.Unlock()
		tick <- now
	}
	// The first tick may come at any time after start; these come a tenth
	// of a second apart. Ticks are taken one at a time, so once a tick is
	// taken the one before it was handled.
	step(0)
	step(0)
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Fatalf("idle: %d processors, want 1", n)
	}
	step(interval * 9 / 10) // 0.9 of a CPU
	step(0)
	if n := runtime.GOMAXPROCS(0); n != widest {
		t.Fatalf("after a busy interval: %d processors, want %d", n, widest)
	}
	for range narrowAfter {
		step(interval / 20)
	}
	step(0)
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Fatalf("after a quiet window: %d processors, want 1", n)
	}
	cancel()
	<-done
	if n := runtime.GOMAXPROCS(0); n != widest {
		t.Fatalf("%d processors after run, want %d back", n, widest)
	}
}
