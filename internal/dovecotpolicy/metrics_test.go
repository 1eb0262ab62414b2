package dovecotpolicy

import (
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"mailguard/internal/metrics"
	"mailguard/internal/pipeline"
	"mailguard/internal/ratecount"
	"mailguard/internal/stats"
)

// The door's decisions and refusals reach the metrics as a filter's do,
// under the summary's keys, when it counts through the daemon's Env.
func TestDecisionsReachTheMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	env := pipeline.Env{Stats: stats.NewCounter(), Metrics: metrics.NewCore(reg, time.Now)}
	c := guessingConfig()
	p := New(Options{Rules: []Rule{mustRule(t, c.Rules[0])}, Counter: ratecount.NewMemory(nil), Timeout: time.Second,
		Log: slog.New(slog.DiscardHandler), Stats: env})
	srv := httptest.NewServer(NewHandler(p, c, slog.New(slog.DiscardHandler), env))
	defer srv.Close()
	d := &door{url: srv.URL}
	fail := map[string]any{"remote": "192.0.2.9", "login": "alice", "success": false, "policy_reject": false}
	for i := 0; i < 6; i++ {
		d.ask(t, "allow", fail)
		d.ask(t, "report", fail)
	}
	post(t, srv.URL+"/?command=allow", `{"login":`)
	has := func(reason string) bool {
		for _, m := range gather(t, reg) {
			if m == `mailguard_hits_total{filter="dovecot_policy",reason="`+reason+`"} 1` {
				return true
			}
		}
		return false
	}
	if !has("guessing delayed") || !has("bad request") {
		t.Fatalf("the door's decisions are not in the metrics:\n%s", strings.Join(gather(t, reg), "\n"))
	}
	if s := env.Stats.Take(); !strings.Contains(s.HitsString(), "dovecot_policy:guessing delayed") {
		t.Fatalf("summary: %s", s.HitsString())
	}
}

func gather(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			out = append(out, fmt.Sprintf("%s{%s} %g", f.GetName(), strings.Join(labels, ","), m.GetCounter().GetValue()))
		}
	}
	return out
}
