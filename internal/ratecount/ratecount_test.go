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
		over, _, err := c.Take(ctx, []Op{{Key: "client:192.0.2.1", N: n, Limit: limit, Window: w}})
		if err != nil {
			t.Fatal(err)
		}
		return over < 0
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
	if over, _, _ := c.Take(ctx, []Op{{Key: "client:192.0.2.2", N: 1, Limit: limit, Window: w}}); over >= 0 {
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
	if over, count, _ := c.Take(ctx, []Op{{Key: "bytes:x", N: 0, Limit: 400, Window: w}}); over != 0 || count != 500 {
		t.Fatalf("after Add: %v %d", over, count)
	}
	// Several ops: all counted, or none. The second is over: the first
	// is not counted either.
	ops := []Op{{Key: "a", N: 1, Limit: 5, Window: w}, {Key: "b", N: 3, Limit: 2, Window: w}}
	if over, _, _ := c.Take(ctx, ops); over != 1 {
		t.Fatalf("over %d, want 1", over)
	}
	if _, count, _ := c.Take(ctx, []Op{{Key: "a", N: 0, Limit: 0, Window: w}}); count != 0 {
		t.Fatalf("an op of a refused take was counted: %d", count)
	}
}

func checkHolders(t *testing.T, c Counter) {
	t.Helper()
	hold := func(holder string) int {
		over, _, err := c.Take(ctx, []Op{{Key: "c", N: 1, Limit: 2, Holder: holder}})
		if err != nil {
			t.Fatal(err)
		}
		return over
	}
	if hold("s1") >= 0 || hold("s2") >= 0 {
		t.Fatal("a holder refused under the limit")
	}
	if hold("s3") != 0 {
		t.Fatal("third holder over a limit of 2")
	}
	// A holder taking again is still one.
	if hold("s2") >= 0 {
		t.Fatal("a holder taking again was counted twice")
	}
	// Giving back twice, or what was never held, gives back nothing more.
	for _, h := range []string{"s1", "s1", "s3"} {
		if err := c.Release(ctx, "c", h); err != nil {
			t.Fatal(err)
		}
	}
	if hold("s4") >= 0 {
		t.Fatal("not released")
	}
	if hold("s5") != 0 {
		t.Fatal("a double release gave back another holder's count")
	}
	if _, _, err := c.Take(ctx, []Op{{Key: "c", N: 1, Limit: 2}}); err != ErrNoHolder {
		t.Fatalf("a holder count without a holder: %v", err)
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
		m.Take(ctx, []Op{{Key: string(rune('a'+i%26)) + string(rune(i)), N: 1, Limit: 10, Window: time.Minute}})
	}
	clock = clock.Add(3 * time.Minute)
	m.Take(ctx, []Op{{Key: "new", N: 1, Limit: 10, Window: time.Minute}})
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

// A holder count whose holder is gone (its host died, or its release was
// lost) ends with its lease; one whose host renews it stays.
func TestRedisLeases(t *testing.T) {
	srv := testserver.StartRedis(t)
	open := func() *Redis {
		r, err := NewRedis(srv.URL(), nil)
		if err != nil {
			t.Fatal(err)
		}
		r.lease = 600 * time.Millisecond
		return r
	}
	alive, dead := open(), open()
	defer alive.Close()
	op := func(holder string) []Op { return []Op{{Key: "k", N: 1, Limit: 3, Holder: holder}} }
	if over, _, err := alive.Take(ctx, op("alive")); over >= 0 || err != nil {
		t.Fatal(over, err)
	}
	if over, _, err := dead.Take(ctx, op("dead")); over >= 0 || err != nil {
		t.Fatal(over, err)
	}
	dead.Close() // the host dies without giving its count back
	if ttl := alive.client.PTTL(ctx, alive.holderKey("k")).Val(); ttl <= 0 || ttl > alive.lease {
		t.Fatalf("a holder count's key lives %s, want at most the lease", ttl)
	}
	time.Sleep(4 * alive.lease)
	over, count, err := alive.Take(ctx, []Op{{Key: "k", N: 0, Limit: 0, Holder: "look"}})
	if err != nil || over != 0 || count != 1 {
		t.Fatalf("after four leases: %d counted, want 1 (the renewed holder alone)", count)
	}
	// Released, a count stops being renewed: the key goes.
	if err := alive.Release(ctx, "k", "alive"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * alive.lease)
	if n := alive.client.Exists(ctx, alive.holderKey("k")).Val(); n != 0 {
		t.Fatal("a released count's key stayed")
	}
	alive.mu.Lock()
	running := alive.renewer
	alive.mu.Unlock()
	if running {
		t.Fatal("the renewer runs with nothing held")
	}
}

// A take whose caller gave up while Redis stalled runs when Redis resumes:
// nobody holds that count, and it ends with its lease.
func TestRedisLateTakeEnds(t *testing.T) {
	srv := testserver.StartRedis(t)
	r, err := NewRedis(srv.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.lease = 600 * time.Millisecond
	op := func(holder string) []Op { return []Op{{Key: "late", N: 1, Limit: 1, Holder: holder}} }
	// A first take loads the script, as a running daemon has.
	if over, _, err := r.Take(ctx, op("warm")); over >= 0 || err != nil {
		t.Fatal(over, err)
	}
	r.Release(ctx, "late", "warm")
	srv.Pause()
	gaveUp, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, _, err = r.Take(gaveUp, op("gone"))
	cancel()
	srv.Resume()
	if err == nil {
		t.Fatal("a take answered by a stalled Redis")
	}
	// It ran after all: the count is there, and nobody renews it.
	deadline := time.Now().Add(time.Second)
	for r.client.ZScore(ctx, r.holderKey("late"), "gone").Err() != nil {
		if time.Now().After(deadline) {
			t.Fatal("the take never reached Redis")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2 * r.lease)
	if over, count, err := r.Take(ctx, op("next")); over >= 0 || err != nil {
		t.Fatalf("a count nobody holds still counted (%d) after two leases: %v", count, err)
	}
}

func BenchmarkTake(b *testing.B) {
	b.Run("memory", func(b *testing.B) {
		m := NewMemory(nil)
		for b.Loop() {
			m.Take(ctx, []Op{{Key: "client:192.0.2.1", N: 1, Limit: 1 << 60, Window: time.Minute}})
		}
	})
	b.Run("redis", func(b *testing.B) {
		srv := testserver.StartRedis(b)
		r, _ := NewRedis(srv.URL(), nil)
		defer r.Close()
		for b.Loop() {
			if _, _, err := r.Take(ctx, []Op{{Key: "client:192.0.2.1", N: 1, Limit: 1 << 60, Window: time.Minute}}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A key counted with a new window (a rule's window changed on reload,
// the counter kept) starts again rather than keep a count that never
// rolls over: from 1m to 1h the old minute's index lies far ahead of
// every hour's.
func TestMemoryWindowChanged(t *testing.T) {
	clock := time.Unix(1_700_000_000, 0)
	m := NewMemory(func() time.Time { return clock })
	op := Op{Key: "k", N: 1, Limit: 2, Window: time.Minute}
	m.Take(ctx, []Op{op})
	m.Take(ctx, []Op{op})
	op.Window = time.Hour
	op.Limit = 3
	for i := range 3 {
		if over, _, _ := m.Take(ctx, []Op{op}); over != -1 {
			t.Fatalf("take %d in the new window refused", i+1)
		}
		clock = clock.Add(2 * time.Minute)
	}
	clock = clock.Add(3 * time.Hour)
	for i := range 3 {
		if over, _, _ := m.Take(ctx, []Op{op}); over != -1 {
			t.Fatalf("three hours on, take %d refused: the count never rolled over", i+1)
		}
	}
}
