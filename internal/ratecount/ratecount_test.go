package ratecount

import (
	"context"
	"testing"
	"time"

	"mailguard/internal/testserver"
)

var ctx = context.Background()

// checkWindow runs the same sliding-window story against a backend whose
// clock the test moves.
func checkWindow(t *testing.T, c Counter, clock *time.Time) {
	t.Helper()
	const limit = 10
	w := time.Minute
	*clock = time.Unix(6000, 0) // the start of a window (6000 s = 100 min)
	take := func(n int64) bool {
		ok, _, err := c.Take(ctx, "client:192.0.2.1", n, limit, w)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	for i := 0; i < limit; i++ {
		if !take(1) {
			t.Fatalf("event %d refused under the limit", i+1)
		}
	}
	if take(1) {
		t.Fatal("event 11 taken over a limit of 10")
	}
	// Another key is counted apart.
	if ok, _, _ := c.Take(ctx, "client:192.0.2.2", 1, limit, w); !ok {
		t.Fatal("keys share a count")
	}
	// A quarter into the next window, 3/4 of the previous ten still count
	// (7): three more fit, not four.
	*clock = clock.Add(w + w/4)
	for i := 0; i < 3; i++ {
		if !take(1) {
			t.Fatalf("event %d refused: the previous window weighs too much", i+1)
		}
	}
	if take(1) {
		t.Fatal("the previous window's events were forgotten too soon")
	}
	// Two windows later everything is forgotten.
	*clock = clock.Add(2 * w)
	if !take(limit) {
		t.Fatal("old windows still counted")
	}
	// Add counts whatever the limit; a take of 0 then sees it.
	if err := c.Add(ctx, "bytes:x", 500, w); err != nil {
		t.Fatal(err)
	}
	if ok, count, _ := c.Take(ctx, "bytes:x", 0, 400, w); ok || count != 500 {
		t.Fatalf("after Add: %v %d", ok, count)
	}
}

func checkHolders(t *testing.T, c Counter) {
	t.Helper()
	for i := 0; i < 2; i++ {
		if ok, err := c.Acquire(ctx, "c", 2); !ok || err != nil {
			t.Fatalf("holder %d: %v %v", i+1, ok, err)
		}
	}
	if ok, _ := c.Acquire(ctx, "c", 2); ok {
		t.Fatal("third holder over a limit of 2")
	}
	c.Release(ctx, "c")
	if ok, _ := c.Acquire(ctx, "c", 2); !ok {
		t.Fatal("not released")
	}
}

func TestMemory(t *testing.T) {
	var clock time.Time
	m := NewMemory(func() time.Time { return clock })
	checkWindow(t, m, &clock)
	checkHolders(t, m)
}

func TestMemorySweepsOldKeys(t *testing.T) {
	clock := time.Unix(6000, 0)
	m := NewMemory(func() time.Time { return clock })
	for i := 0; i < sweepEvery-1; i++ {
		m.Take(ctx, string(rune('a'+i%26))+string(rune(i)), 1, 10, time.Minute)
	}
	clock = clock.Add(3 * time.Minute)
	m.Take(ctx, "new", 1, 10, time.Minute)
	if len(m.windows) != 1 {
		t.Fatalf("%d keys kept after their windows ended", len(m.windows))
	}
}

func TestRedis(t *testing.T) {
	srv := testserver.StartRedis(t)
	var clock time.Time
	r, err := NewRedis(srv.URL(), func() time.Time { return clock })
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	checkWindow(t, r, &clock)
	checkHolders(t, r)
	// Keys expire with their windows.
	n, _ := r.client.Keys(ctx, "mailguard:rl:*").Result()
	for _, k := range n {
		if ttl := r.client.PTTL(ctx, k).Val(); ttl <= 0 {
			t.Errorf("%s never expires (%s)", k, ttl)
		}
	}
}

func BenchmarkTake(b *testing.B) {
	b.Run("memory", func(b *testing.B) {
		m := NewMemory(nil)
		for b.Loop() {
			m.Take(ctx, "client:192.0.2.1", 1, 1<<60, time.Minute)
		}
	})
	b.Run("redis", func(b *testing.B) {
		srv := testserver.StartRedis(b)
		r, _ := NewRedis(srv.URL(), nil)
		defer r.Close()
		for b.Loop() {
			if _, _, err := r.Take(ctx, "client:192.0.2.1", 1, 1<<60, time.Minute); err != nil {
				b.Fatal(err)
			}
		}
	})
}
