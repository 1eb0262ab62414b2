package ratecount

import (
	"math/rand/v2"
	"testing"
	"time"

	"mailguard/internal/testserver"
)

// checkWindowBounds holds the sliding window to what the package comment
// promises: at most the limit is counted in each fixed window, however
// the events arrive; and a window-long stretch across two fixed windows
// may see more, when the previous one's events bunched at its end, but
// never more than twice the limit.
func checkWindowBounds(t *testing.T, c Counter, clock *time.Time) {
	t.Helper()
	const limit = 40
	w := time.Minute
	take := func(key string) bool {
		over, _, err := c.Take(ctx, []Op{{Key: key, N: 1, Limit: limit, Window: w}})
		if err != nil {
			t.Fatal(err)
		}
		return over < 0
	}

	// Random arrivals, three times what the limit lets through, over ten
	// windows: no fixed window counts more than the limit.
	rnd := rand.New(rand.NewPCG(1, 2))
	*clock = time.Unix(6000, 0).Add(17 * time.Second) // not at a window's start
	perWindow := map[int64]int{}
	end := clock.Add(10 * w)
	for clock.Before(end) {
		*clock = clock.Add(time.Duration(rnd.ExpFloat64() * float64(w) / (3 * limit)))
		if take("random") {
			perWindow[clock.UnixNano()/int64(w)]++
		}
	}
	for i, n := range perWindow {
		if n > limit {
			t.Errorf("fixed window %d counted %d events, limit %d", i, n, limit)
		}
	}

	// The worst case: the limit taken in the last second of a window, then
	// a try every 100 ms. The next window weighs the burst as if spread
	// evenly: the 60 s from the burst admit more than the limit, at most
	// twice it.
	*clock = time.Unix(6000, 0).Add(20*w - time.Second)
	burst := *clock
	admitted := 0
	for i := 0; i < limit; i++ {
		if take("burst") {
			admitted++
		}
	}
	for *clock = burst.Add(100 * time.Millisecond); clock.Before(burst.Add(w)); *clock = clock.Add(100 * time.Millisecond) {
		if take("burst") {
			admitted++
		}
	}
	if admitted > 2*limit {
		t.Errorf("%d admitted in the 60 s from a burst, more than twice the limit of %d", admitted, limit)
	}
	t.Logf("a burst of %d at the end of a window, then a try every 100 ms: %d admitted in the 60 s from it", limit, admitted)
}

func TestMemoryWindowBounds(t *testing.T) {
	var clock time.Time
	checkWindowBounds(t, NewMemory(func() time.Time { return clock }), &clock)
}

func TestRedisWindowBounds(t *testing.T) {
	srv := testserver.StartRedis(t)
	var clock time.Time
	r, err := NewRedis(srv.URL(), func() time.Time { return clock })
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	checkWindowBounds(t, r, &clock)
}
