package outbreak

import (
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

var testSettings = Settings{Window: 30 * time.Minute, MinNetworks: 3, Hold: time.Hour}

func key(i int) Key {
	var k Key
	binary.BigEndian.PutUint64(k[:], uint64(i)+1)
	return k
}

func TestMemoryCountsDistinctNetworksInWindow(t *testing.T) {
	clk := &clock{time.Unix(1e9, 0)}
	m := NewMemory(testSettings, 1000, clk.now)
	ctx := context.Background()
	k := []Key{key(1)}
	for i := 0; i < 5; i++ { // one network, five copies
		st, _ := m.Observe(ctx, k, "192.0.2.0/24", fmt.Sprintf("s%d@x", i))
		if st[0].Networks != 1 || st[0].Senders != int64(i+1) {
			t.Fatalf("copy %d: %+v", i, st[0])
		}
	}
	st, _ := m.Observe(ctx, k, "198.51.100.0/24", "a@x")
	if st[0].Networks != 2 {
		t.Fatalf("%+v", st[0])
	}
	clk.t = clk.t.Add(40 * time.Minute) // past the window and its quarter
	st, _ = m.Observe(ctx, k, "203.0.113.0/24", "a@x")
	if st[0].Networks != 1 || st[0].Senders != 1 {
		t.Fatalf("old networks still counted: %+v", st[0])
	}
}

func TestMemoryHoldAndRelease(t *testing.T) {
	clk := &clock{time.Unix(1e9, 0)}
	m := NewMemory(testSettings, 1000, clk.now)
	ctx := context.Background()
	keys := []Key{key(1), key(2)}
	id, created, _ := m.Suspect(ctx, Sighting{ID: key(1), Keys: keys, Refresh: true})
	if !created {
		t.Fatal("not created")
	}
	if st, _ := m.Observe(ctx, keys[1:], "192.0.2.0/24", "a@x"); !st[0].Held {
		t.Fatalf("not held: %+v", st[0])
	}
	// Another sighting sharing a key joins the record.
	id2, created, _ := m.Suspect(ctx, Sighting{ID: key(3), Keys: []Key{key(2), key(3)}, Held: true})
	if created || id2 != id {
		t.Fatalf("a second record %s for one fingerprint", id2)
	}
	recs, _ := m.List(ctx)
	if len(recs) != 1 || recs[0].Held != 1 || len(recs[0].Keys) != 3 {
		t.Fatalf("%+v", recs)
	}
	if ok, err := m.Release(ctx, id); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if st, _ := m.Observe(ctx, keys, "192.0.2.0/24", "a@x"); st[0].Held || !st[0].Released {
		t.Fatalf("released yet %+v", st[0])
	}
	if ok, _ := m.Release(ctx, key(9).String()); ok {
		t.Fatal("an unknown id released")
	}
	if _, err := m.Release(ctx, "../x"); err == nil {
		t.Fatal("a bad id accepted")
	}
	// The hold ends hold after the last refresh.
	m.Suspect(ctx, Sighting{ID: key(5), Keys: []Key{key(5)}, Refresh: true})
	clk.t = clk.t.Add(61 * time.Minute)
	if st, _ := m.Observe(ctx, []Key{key(5)}, "192.0.2.0/24", "a@x"); st[0].Held {
		t.Fatal("held past hold")
	}
}

// A flood of new fingerprints (every message a new attachment) keeps the
// map within max_fingerprints, and the fingerprints seen from several
// networks outlive it.
func TestMemoryFloodIsBounded(t *testing.T) {
	clk := &clock{time.Unix(1e9, 0)}
	m := NewMemory(testSettings, 1000, clk.now)
	ctx := context.Background()
	worm := []Key{key(1 << 30)}
	for i := 0; i < 2; i++ {
		m.Observe(ctx, worm, fmt.Sprintf("10.0.%d.0/24", i), "a@x")
	}
	for i := 0; i < 100000; i++ {
		m.Observe(ctx, []Key{key(i)}, "192.0.2.0/24", "a@x")
		if i%10000 == 0 {
			m.Observe(ctx, worm, "10.0.9.0/24", "a@x")
		}
	}
	if n := m.Len(); n > 1000 {
		t.Fatalf("%d keys kept, bound 1000", n)
	}
	if st, _ := m.Observe(ctx, worm, "10.0.2.0/24", "a@x"); st[0].Networks != 4 {
		t.Fatalf("the spreading fingerprint was evicted: %+v", st[0])
	}
}

// TestMemoryPerFingerprint measures the memory backend's bytes per key,
// at 1,000,000 keys with -outbreak.full (100,000 otherwise):
// `go test ./internal/filter/outbreak -run TestMemoryPerFingerprint -v -args -outbreak.full`.
func TestMemoryPerFingerprint(t *testing.T) {
	n := 100000
	if *fullFlag() {
		n = 1000000
	}
	clk := &clock{time.Unix(1e9, 0)}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	m := NewMemory(testSettings, n, clk.now)
	ctx := context.Background()
	batch := make([]Key, 7) // one attachment's keys
	for i := 0; i < n; i += len(batch) {
		for j := range batch {
			batch[j] = key(i + j)
		}
		m.Observe(ctx, batch, fmt.Sprintf("10.%d.%d.0/24", i>>16&255, i>>8&255), fmt.Sprintf("s%d@x", i))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / float64(m.Len())
	t.Logf("%d fingerprints: %.1f MB, %.0f bytes each", m.Len(), float64(after.HeapAlloc-before.HeapAlloc)/1e6, per)
	if per > 150 {
		t.Errorf("%.0f bytes per fingerprint", per)
	}
	runtime.KeepAlive(m)
}
