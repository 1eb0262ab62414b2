package access_test

import (
	"testing"
	"time"

	"mailguard/internal/filters"
	"mailguard/internal/logging"
	"mailguard/internal/pipeline"
	"mailguard/internal/testserver"
)

// A reload that asks the same DNS server keeps the blocklist answers
// cached so far: with the DNS server stalled right after the reload, a
// listed client is still refused from the cache (it used to be asked
// again, time out, and pass under on_error = "accept").
func TestReloadKeepsTheDNSCache(t *testing.T) {
	d := testserver.StartDNS(t, "bl.test", map[string]string{"2.0.0.127": "127.0.0.2"})
	text := "filters = [\"access\"]\n[access]\ndnsbl = [\"bl.test\"]\ndns_server = \"" + d.Server() + "\"\nexempt_authenticated = false\ndnsbl_timeout = \"500ms\"\n"
	rebuild := func(prev *pipeline.Pipeline) *pipeline.Pipeline {
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
	p1 := rebuild(nil)
	if v, stage := session(p1, "127.0.0.2", "[127.0.0.2]", "x", nil); stage != "connect" || v.Code != 550 {
		t.Fatalf("listed: %v at %q", v, stage)
	}
	p2 := rebuild(p1)
	p1.Retire()
	d.Pause()
	defer d.Resume()
	if v, stage := session(p2, "127.0.0.2", "[127.0.0.2]", "x", nil); stage != "connect" || v.Code != 550 {
		t.Fatalf("listed, after a reload, DNS stalled: %v at %q; want 550 from the cache", v, stage)
	}
}
