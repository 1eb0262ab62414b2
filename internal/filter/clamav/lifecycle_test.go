package clamav_test

import (
	"testing"
	"time"

	"mailguard/internal/filters"
	"mailguard/internal/logging"
	"mailguard/internal/pipeline"
)

// A reload with the same clamd settings keeps the pool: the next message
// goes over the session the last one left open, and the session is
// closed when the last pipeline holding the pool is retired (it used to
// stay open until a finalizer ran, or clamd's idle timeout).
func TestReloadHandsOverThePool(t *testing.T) {
	fake := newRecordingClamd(t)
	text := "filters = [\"clamav\"]\n[clamav]\naddress = \"unix:" + fake.sock + "\"\nclamd_config = \"\"\n"
	rebuild := func(prev *pipeline.Pipeline, text string) *pipeline.Pipeline {
		cfg, err := filters.Parse("test.toml", []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		p, err := filters.BuildWith(cfg, pipeline.Env{Log: logging.Discard(), Now: time.Now}, filters.BuildOptions{Predecessor: prev})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	counts := func() (sessions, open int) {
		fake.mu.Lock()
		defer fake.mu.Unlock()
		return fake.sessions, fake.open
	}
	p1 := rebuild(nil, text)
	run(t, p1, clean)
	waitFor(t, "one session", func() bool { s, o := counts(); return s == 1 && o == 1 })

	p2 := rebuild(p1, text)
	p1.Retire()
	run(t, p2, clean)
	if s, o := counts(); s != 1 || o != 1 {
		t.Fatalf("after a reload with the same settings: %d sessions opened, %d open; want the one kept", s, o)
	}

	// Another connection limit: a pool of its own, and the old one's
	// session closes with the pipeline that held it.
	p3 := rebuild(p2, text+"max_connections = 5\n")
	run(t, p3, clean)
	waitFor(t, "a second session", func() bool { s, o := counts(); return s == 2 && o == 2 })
	p2.Retire()
	waitFor(t, "the old pool's session closed", func() bool { _, o := counts(); return o == 1 })
	p3.Retire()
	waitFor(t, "every session closed", func() bool { _, o := counts(); return o == 0 })
}
