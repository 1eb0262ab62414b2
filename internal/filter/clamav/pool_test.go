package clamav_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"mailguard/internal/testserver"
	"mailguard/internal/verdict"
)

// batch scans n clean messages at once and returns how long the last
// took and how many were not delivered.
func batch(t *testing.T, scanOne func() verdict.Verdict, n int) (time.Duration, int) {
	t.Helper()
	start := time.Now()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		refused int
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if v := scanOne(); v.Final() {
				mu.Lock()
				refused++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return time.Since(start), refused
}

// Two real clamds, one hung (SIGSTOP: it still accepts connections and
// takes the stream, but never answers). The messages already streamed to
// it when it hung get on_error at their timeout; the hung clamd is then
// left out, and the next batches go to the other one, all delivered.
func TestHungClamdRoutedAround(t *testing.T) {
	a := testserver.StartClamd(t, testserver.ClamdOptions{})
	b := testserver.StartClamd(t, testserver.ClamdOptions{})
	p, _ := build(t, fmt.Sprintf("filters = [\"clamav\"]\n[clamav]\naddress = \"%s, %s\"\nclamd_config = \"\"\ntimeout = \"10s\"\n", a.Address(), b.Address()))
	scanOne := func() verdict.Verdict { return run(t, p, clean).Verdict }
	const n = 20
	if d, refused := batch(t, scanOne, n); refused != 0 {
		t.Fatalf("both clamds up: %d of %d refused (%s)", refused, n, d)
	}
	b.Hang()
	d, refused := batch(t, scanOne, n)
	t.Logf("batch 1, clamd %s hung: %d messages in %s, %d not delivered", b.Address(), n, d, refused)
	for i := 2; i <= 4; i++ {
		d, refused := batch(t, scanOne, n)
		t.Logf("batch %d: %d messages in %s, %d not delivered", i, n, d, refused)
		if refused != 0 {
			t.Errorf("batch %d: %d of %d messages not delivered: the hung clamd was not left out", i, refused, n)
		}
	}
}
