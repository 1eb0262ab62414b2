package stats

import (
	"sync"
	"testing"
)

func TestTakeResets(t *testing.T) {
	c := NewCounter()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				c.Message()
				c.Hit("virus", "WORM_B")
			}
		}()
	}
	wg.Wait()
	c.Hit("virus", "WORM_A")
	c.Hit("access", "")
	s := c.Take()
	if s.Messages != 800 || s.Hits["virus:WORM_B"] != 800 || s.HitsString() != "access=1 virus:WORM_A=1 virus:WORM_B=800" {
		t.Fatalf("summary %+v %q", s, s.HitsString())
	}
	if s := c.Take(); s.Messages != 0 || len(s.Hits) != 0 {
		t.Fatalf("not reset: %+v", s)
	}
}

// Sessions count while the summary takes the counts: nothing is lost,
// and (under -race) nothing races.
func TestConcurrentHitAndTake(t *testing.T) {
	c := NewCounter()
	const writers, each = 4, 2000
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					c.Hit("f", "r")
				}
			}()
		}
		wg.Wait()
	}()
	var total uint64
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		total += c.Take().Hits["f:r"]
	}
	if total != writers*each {
		t.Fatalf("counted %d of %d", total, writers*each)
	}
}
