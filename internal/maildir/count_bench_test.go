package maildir

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// bigMaildir makes a Maildir of n empty messages named as Dovecot names
// them, once per test binary run.
var bigMaildirs sync.Map

func bigMaildir(tb testing.TB, n int) string {
	if dir, ok := bigMaildirs.Load(n); ok {
		return dir.(string)
	}
	dir, err := os.MkdirTemp("", "maildir-bench")
	if err != nil {
		tb.Fatal(err)
	}
	cur := filepath.Join(dir, "cur")
	os.MkdirAll(cur, 0o700)
	for i := range n {
		name := fmt.Sprintf("1700000000.M%dP4242.mail.example.edu,S=%d,W=%d:2,S", i, 1000+i%5000, 1020+i%5000)
		f, err := os.Create(filepath.Join(cur, name))
		if err != nil {
			tb.Fatal(err)
		}
		f.Close()
	}
	bigMaildirs.Store(n, dir)
	return dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	bigMaildirs.Range(func(_, dir any) bool { os.RemoveAll(dir.(string)); return true })
	os.Exit(code)
}

// peakHeap samples the heap's object bytes every millisecond while f
// runs, and returns the highest sample.
func peakHeap(f func()) uint64 {
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			if v := s[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	f()
	close(stop)
	<-done
	return peak.Load()
}

// BenchmarkCount counts a Maildir of 100,000 messages (MAILDIR_BENCH_FILES
// to change), four at once as the quota filter may: allocations per count,
// and the heap's peak; beside
// the way it was counted before (each folder read whole with ReadDir),
// run in turn in the same process for a fair ratio.
func BenchmarkCount(b *testing.B) {
	files := 100_000
	if n, err := strconv.Atoi(os.Getenv("MAILDIR_BENCH_FILES")); err == nil && n > 0 {
		files = n
	}
	dir := bigMaildir(b, files)
	for _, c := range []struct {
		name  string
		count func(context.Context, string) (Totals, error)
	}{{"whole-folders", countWholeFolders}, {"batched", Count}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			var peak uint64
			for b.Loop() {
				p := peakHeap(func() {
					var wg sync.WaitGroup
					for range 4 {
						wg.Go(func() {
							if t, err := c.count(context.Background(), dir); err != nil || t.Count != int64(files) {
								b.Errorf("%+v %v", t, err)
							}
						})
					}
					wg.Wait()
				})
				peak = max(peak, p)
			}
			b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
		})
	}
}

// countWholeFolders is how Count worked before, for the benchmark: each
// directory read whole with ReadDir(-1).
func countWholeFolders(ctx context.Context, dir string) (Totals, error) {
	var t Totals
	folders := []string{dir}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return t, err
	}
	for _, e := range entries {
		if name := e.Name(); e.IsDir() && strings.HasPrefix(name, ".") {
			folders = append(folders, filepath.Join(dir, name))
		}
	}
	for _, folder := range folders {
		for _, sub := range []string{"cur", "new"} {
			if err := ctx.Err(); err != nil {
				return t, err
			}
			entries, err := os.ReadDir(filepath.Join(folder, sub))
			if err != nil && !os.IsNotExist(err) {
				return t, err
			}
			for _, e := range entries {
				if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
					continue
				}
				size, ok := sizeFromName([]byte(e.Name()))
				if !ok {
					info, err := e.Info()
					if err != nil {
						continue
					}
					size = info.Size()
				}
				t.Bytes += size
				t.Count++
			}
		}
	}
	return t, nil
}
