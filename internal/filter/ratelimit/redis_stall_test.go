package ratelimit_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"mailguard/internal/pipeline"
	"mailguard/internal/testserver"
)

// A Redis that stalls for 3 s and resumes (SIGSTOP, SIGCONT) leaves no
// client locked out: a count whose release failed during the stall, and a
// take that timed out but ran when Redis resumed, are both gone within
// seconds of their sessions' end; while a session that stayed open across
// the stall still holds its count.
func TestConcurrencySurvivesRedisStall(t *testing.T) {
	srv := testserver.StartRedis(t)
	p, _ := build(t, "backend = \""+srv.URL()+"\"\n[[ratelimit.rule]]\nevent = \"concurrency\"\nkey = \"client\"\nlimit = 1\n", nil)

	const (
		released = "192.0.2.1" // its session ends during the stall
		late     = "192.0.2.2" // its take runs only when Redis resumes
		open     = "192.0.2.3" // its session stays open throughout
	)
	a, v := connect(p, released)
	if v.Final() {
		t.Fatalf("first session: %v", v)
	}
	o, v := connect(p, open)
	if v.Final() {
		t.Fatalf("first session: %v", v)
	}
	defer o.Close()

	srv.Pause()
	stalled := time.Now()
	resumed := false
	resume := func() {
		if !resumed {
			srv.Resume()
			resumed = true
		}
	}
	defer resume()
	// The MTA gives up on this session while its take waits for Redis.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	b := p.Open(ctx, &pipeline.Conn{Addr: late, Hostname: "[" + late + "]", Family: pipeline.FamilyInet})
	b.Connect()
	b.Close()
	cancel()
	a.Close() // the release fails: Redis does not answer
	time.Sleep(3*time.Second - time.Since(stalled))
	resume()
	back := time.Now()

	// Within a bounded wait, the two clients whose sessions ended get in
	// again; before, their counts stayed for an hour.
	deadline := back.Add(45 * time.Second)
	for _, addr := range []string{released, late} {
		for {
			cn, v := connect(p, addr)
			cn.Close()
			if !v.Final() {
				t.Logf("%s let in again %.1f s after Redis resumed", addr, time.Since(back).Seconds())
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s, with no session open, still refused %.0f s after Redis resumed: %v; %s", addr, time.Since(back).Seconds(), v, redisCounts(srv))
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// The session open across the stall still counts: a second one from
	// its client is refused, after every lease that was not renewed ran out.
	second, v := connect(p, open)
	second.Close()
	if v.Code != 451 {
		t.Errorf("a second session of a client whose first is open: %v (its count was lost); %s", v, redisCounts(srv))
	}
}

// redisCounts describes the concurrency keys, for a failure message.
func redisCounts(srv *testserver.Redis) string {
	opts, _ := redis.ParseURL(srv.URL())
	c := redis.NewClient(opts)
	defer c.Close()
	ctx := context.Background()
	keys, _ := c.Keys(ctx, "mailguard:rl:*").Result()
	out := "keys:"
	for _, k := range keys {
		out += " " + k + " (ttl " + c.PTTL(ctx, k).Val().Round(time.Second).String() + ")"
	}
	return out
}
