package ratelimit_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"mailguard/internal/filters"
	"mailguard/internal/logging"
	"mailguard/internal/pipeline"
	"mailguard/internal/stats"
	"mailguard/internal/testserver"
)

const oneMessagePerMinute = `[[ratelimit.rule]]
name = "msg"
event = "message"
key = "client"
limit = 1
window = "1m"
`

func rebuild(t *testing.T, section string, prev *pipeline.Pipeline) *pipeline.Pipeline {
	t.Helper()
	cfg, err := filters.Parse("test.toml", []byte("filters = [\"ratelimit\"]\n[ratelimit]\n"+section))
	if err != nil {
		t.Fatal(err)
	}
	p, err := filters.BuildWith(cfg, pipeline.Env{Log: logging.Discard(), Now: time.Now}, filters.BuildOptions{Predecessor: prev})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func message(p *pipeline.Pipeline, addr string) string {
	cn, _ := connect(p, addr)
	defer cn.Close()
	m, v := cn.Begin(pipeline.AllStages, pipeline.AllModifications, "a@example.org", "")
	defer m.Close()
	return v.String()
}

// A reload with the same backend keeps the counts; one with another
// backend starts again.
func TestReloadKeepsMemoryCounts(t *testing.T) {
	p1 := rebuild(t, "backend = \"memory\"\n"+oneMessagePerMinute, nil)
	if v := message(p1, "192.0.2.1"); v != "continue" {
		t.Fatalf("first message: %s", v)
	}
	p2 := rebuild(t, "backend = \"memory\"\n"+oneMessagePerMinute, p1)
	p1.Retire()
	if v := message(p2, "192.0.2.1"); !strings.HasPrefix(v, "tempfail 451 4.7.1") {
		t.Fatalf("after the reload: %s", v)
	}
	redis := testserver.StartRedis(t)
	p3 := rebuild(t, "backend = \""+redis.URL()+"\"\n"+oneMessagePerMinute, p2)
	p2.Retire()
	if v := message(p3, "192.0.2.1"); v != "continue" {
		t.Fatalf("a new backend counted what the old one had: %s", v)
	}
	p3.Retire()
}

// The Redis client is handed to the successor, not opened again, and is
// closed when the last pipeline holding it is: none sits in a
// package-level map for ever.
func TestRedisClientHandedOverAndClosed(t *testing.T) {
	srv := testserver.StartRedis(t)
	admin := redis.NewClient(&redis.Options{Addr: strings.TrimPrefix(strings.TrimSuffix(srv.URL(), "/0"), "redis://")})
	defer admin.Close()
	ctx := context.Background()
	// Clients other than admin's own connection.
	clients := func() int {
		list, err := admin.ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(list, "\n") - 1
	}
	waitClients := func(want int, what string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); clients() != want; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d Redis clients, want %d", what, clients(), want)
			}
		}
	}
	section := "backend = \"" + srv.URL() + "\"\n" + oneMessagePerMinute
	p1 := rebuild(t, section, nil)
	message(p1, "192.0.2.1")
	waitClients(1, "after the first message")

	p2 := rebuild(t, section, p1)
	waitClients(1, "with the client handed over")
	cn, _ := connect(p1, "192.0.2.2") // a session still on the old pipeline
	p1.Retire()
	if v := message(p2, "192.0.2.1"); !strings.HasPrefix(v, "tempfail") {
		t.Fatalf("after the reload: %s", v)
	}
	cn.Close()
	waitClients(1, "after the old pipeline's last session")

	// Another database: a client of its own; the old one closes with the
	// last pipeline that holds it.
	p3 := rebuild(t, strings.Replace(section, "/0\"", "/1\"", 1), p2)
	message(p3, "192.0.2.1")
	waitClients(2, "old and new backend while the old pipeline lives")
	p2.Retire()
	waitClients(1, "once the old pipeline is retired")
	p3.Retire()
	waitClients(0, "once the last pipeline is retired")
}

// The tarpit's slots are handed over: a session held by the old
// pipeline's tarpit still takes a slot after a reload, so a flood cannot
// get twice max_tarpitted sessions held by reloading in between.
func TestReloadKeepsTarpitSlots(t *testing.T) {
	section := `max_tarpitted = 1
[[ratelimit.rule]]
name = "conn"
event = "connection"
key = "client"
limit = 1
window = "1m"
action = "tarpit:20s,tempfail"
`
	build := func(prev *pipeline.Pipeline, counts *stats.Counter) *pipeline.Pipeline {
		cfg, err := filters.Parse("test.toml", []byte("filters = [\"ratelimit\"]\n[ratelimit]\n"+section))
		if err != nil {
			t.Fatal(err)
		}
		p, err := filters.BuildWith(cfg, pipeline.Env{Log: logging.Discard(), Stats: counts, Now: time.Now}, filters.BuildOptions{Predecessor: prev})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	s1, s2 := stats.NewCounter(), stats.NewCounter()
	p1 := build(nil, s1)
	first, _ := connect(p1, "192.0.2.1")
	defer first.Close()
	ctx, cancel := context.WithCancel(context.Background())
	held := make(chan struct{})
	go func() { // the second connection waits in the tarpit
		defer close(held)
		cn := p1.Open(ctx, &pipeline.Conn{Addr: "192.0.2.1", Family: pipeline.FamilyInet})
		cn.Connect()
		cn.Close()
	}()
	defer func() { cancel(); <-held }()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(s1.Take().HitsString(), "ratelimit:conn delayed=1"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second connection was not tarpitted")
		}
	}

	p2 := build(p1, s2)
	p1.Retire()
	cn, v := connect(p2, "192.0.2.1")
	defer cn.Close()
	if !strings.HasPrefix(v.String(), "tempfail 451 4.7.1") {
		t.Fatalf("third connection, after the reload: %v", v)
	}
	if hits := s2.Take().HitsString(); !strings.Contains(hits, "ratelimit:conn tarpit full=1") {
		t.Fatalf("the new pipeline's tarpit had a free slot: %s", hits)
	}
}
