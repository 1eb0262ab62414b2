package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"mailguard/internal/metrics"
	"mailguard/internal/verdict"
)

// gathered renders reg's samples as "name{l=v,...} value" lines.
func gathered(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			v := m.GetCounter().GetValue()
			if h := m.GetHistogram(); h != nil {
				v = float64(h.GetSampleCount())
			}
			lines = append(lines, fmt.Sprintf("%s{%s} %g", f.GetName(), strings.Join(labels, ","), v))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// A filter's error and its timeout are counted apart, under its name, and
// its policy verdict counts as the message's outcome; each call is timed.
func TestMetricsOfFailures(t *testing.T) {
	reg := prometheus.NewRegistry()
	env := Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: metrics.NewCore(reg, time.Now)}
	var calls atomic.Int64
	f := &fakeFilter{name: "flaky", reads: StageBody, open: new(atomic.Int64), body: func([]byte) (verdict.Verdict, error) {
		if calls.Add(1) == 1 {
			return verdict.Pass, errors.New("broken")
		}
		return verdict.Pass, context.DeadlineExceeded
	}}
	p := New(env, Member{Filter: f, OnError: OnErrorTempFail, Timeout: time.Second})
	for range 2 {
		m, _ := p.Begin(&Conn{Addr: "192.0.2.1"}, AllStages, "a@example.org", "")
		m.Rcpt("u@example.edu", "")
		m.Body([]byte("x"))
		m.End()
		m.Close()
	}
	got := gathered(t, reg)
	for _, want := range []string{
		"mailguard_filter_failures_total{filter=flaky,reason=error} 1",
		"mailguard_filter_failures_total{filter=flaky,reason=timeout} 1",
		"mailguard_hits_total{filter=flaky,reason=error} 1",
		"mailguard_verdicts_total{filter=flaky,outcome=tempfailed} 2",
		"mailguard_messages_total{} 2",
		"mailguard_filter_call_duration_seconds{filter=flaky,stage=body} 2",
		"mailguard_stage_duration_seconds{stage=rcpt} 2",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("gathered:\n%s", got)
	}
	if r := env.Metrics.Activity.Recent(); len(r) != 2 || r[0].Key != "flaky:timeout" || r[0].Client != "192.0.2.1" {
		t.Errorf("recent decisions: %+v", r)
	}
}
