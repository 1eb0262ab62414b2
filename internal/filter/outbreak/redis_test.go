package outbreak_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"mailguard/internal/filter/outbreak"
	"mailguard/internal/filters"
	"mailguard/internal/filters/filterstest"
	"mailguard/internal/loadgen"
	"mailguard/internal/logging"
	"mailguard/internal/pipeline"
	"mailguard/internal/testserver"
)

// TestTwoInstancesShareRedis: two mailguard instances (each its own
// pipeline, milter listener, Redis client and samples folder) on one real
// Redis get the worm's copies at once, each from its own network. Across
// both, at most min_networks (+1 for two copies crossing at once) are
// accepted; list through Redis shows one record; a release through Redis
// lets the next copies through on both.
func TestTwoInstancesShareRedis(t *testing.T) {
	rd := testserver.StartRedis(t)
	dir := t.TempDir()
	copies := 60
	if *outbreak.Full {
		copies = 300
	}
	if err := loadgen.GenerateWorm(loadgen.WormOptions{Dir: filepath.Join(dir, "worm"), Count: copies + 2, Payload: 9, Size: 20000, Seed: 3, Vary: 4}); err != nil {
		t.Fatal(err)
	}
	worm, err := loadgen.LoadCorpus(filepath.Join(dir, "worm"))
	if err != nil {
		t.Fatal(err)
	}
	doors := make([]func(simMsg) string, 2)
	for i := range doors {
		p, _ := filterstest.Build(t, "", outbreakConfig(filepath.Join(dir, fmt.Sprintf("mx%d", i)), rd.URL()), pipeline.Env{Log: logging.Discard(), Now: time.Now})
		c := startDoor(t, p)
		doors[i] = func(s simMsg) string { return send(t, c, s) }
	}
	var (
		mu       sync.Mutex
		accepted int
		wg       sync.WaitGroup
	)
	for i := range doors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := i; j < copies; j += 2 {
				v := doors[i](simMsg{addr: fmt.Sprintf("10.%d.%d.7", j/250, j%250), from: fmt.Sprintf("f%d@forged.example", j), m: worm[j]})
				mu.Lock()
				if v == "accept" {
					accepted++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("two instances, %d worm copies from %d networks: %d accepted", copies, copies, accepted)
	if accepted > minNetworks+1 || accepted < minNetworks-1 {
		t.Fatalf("%d copies accepted across both instances, want about %d", accepted, minNetworks)
	}
	cfg, err := filters.Parse("t.toml", []byte(outbreakConfig(dir, rd.URL())))
	if err != nil {
		t.Fatal(err)
	}
	store, err := outbreak.OpenStore(cfg.Sections[outbreak.Name].(*outbreak.Config))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	reply := outbreak.Do(ctx, store, outbreak.Request{Op: "list"})
	if reply.Error != "" || len(reply.Records) != 1 || reply.Records[0].Held != int64(copies-accepted) {
		t.Fatalf("list: %+v", reply)
	}
	if r := reply.Records[0]; r.Networks < minNetworks || r.Senders < minNetworks || r.Name == "" {
		t.Fatalf("record %+v", r)
	}
	if reply = outbreak.Do(ctx, store, outbreak.Request{Op: "release", ID: reply.Records[0].ID}); !reply.Released {
		t.Fatalf("release: %+v", reply)
	}
	for i := range doors {
		if v := doors[i](simMsg{addr: fmt.Sprintf("10.9.%d.7", i), from: "x@y", m: worm[copies+i]}); v != "accept" {
			t.Fatalf("instance %d after the release: %s", i+1, v)
		}
	}
}

// TestRedisMemoryPerFingerprint measures what one fingerprint seen once
// costs in Redis (its network and sender HyperLogLogs of the current part
// of the window), from Redis's own used_memory: 20,000 fingerprints, or
// 1,000,000 with -outbreak.full.
func TestRedisMemoryPerFingerprint(t *testing.T) {
	rd := testserver.StartRedis(t)
	n := 20000
	if *outbreak.Full {
		n = 1000000
	}
	store, err := outbreak.NewRedis(rd.URL(), outbreak.Settings{Window: 30 * time.Minute, MinNetworks: 10, Hold: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	used := func() int64 {
		info, err := store.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info
	}
	before := used()
	batch := make([]outbreak.Key, 7)
	for i := 0; i < n; i += len(batch) {
		for j := range batch {
			batch[j] = outbreak.Key{byte(i + j), byte((i + j) >> 8), byte((i + j) >> 16), 1}
		}
		if _, err := store.Observe(ctx, batch, fmt.Sprintf("10.%d.%d.0/24", i>>16&255, i>>8&255), fmt.Sprintf("s%d@x", i)); err != nil {
			t.Fatal(err)
		}
	}
	per := float64(used()-before) / float64(n)
	t.Logf("Redis: %d fingerprints seen once: %.1f MB, %.0f bytes each", n, float64(used()-before)/1e6, per)
	if per > 1000 {
		t.Errorf("%.0f bytes per fingerprint in Redis", per)
	}
}
