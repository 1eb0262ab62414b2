// Package webstatus serves mailguard's HTTP listener: the Prometheus
// metrics (/metrics), a status page for a person (/), and the same facts
// as JSON (/status.json) for `mailguard status`. Everything is read-only
// and drawn from the one metrics registry and the pipeline's activity
// record, so the page, the command and Prometheus never disagree.
package webstatus

import (
	"cmp"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"mailguard/internal/metrics"
)

// ConfigState is the configuration's latest load, as the daemon reports it.
type ConfigState struct {
	File     string    `json:"file"`
	LoadedAt time.Time `json:"loaded_at"`
	OK       bool      `json:"ok"`
	Message  string    `json:"message"`
	Filters  []string  `json:"filters"`
}

// Count is one counted key.
type Count struct {
	Key   string  `json:"key"`
	Value float64 `json:"value"`
}

// Health is one outside service's probe.
type Health struct {
	Name        string  `json:"name"` // "clamav clamd"
	Target      string  `json:"target"`
	Up          bool    `json:"up"`
	PingSeconds float64 `json:"ping_seconds"`
}

// Span is the activity of a recent span of time.
type Span struct {
	Messages uint64  `json:"messages"`
	Refusals []Count `json:"refusals"` // by reason, largest first
}

// Snapshot is every fact the page and the command show.
type Snapshot struct {
	Now       time.Time          `json:"now"`
	Started   time.Time          `json:"started"`
	Version   string             `json:"version"`
	Config    ConfigState        `json:"config"`
	InFlight  float64            `json:"sessions_in_flight"`
	Messages  float64            `json:"messages_total"`
	Verdicts  []Count            `json:"verdicts_total"`
	TopHits   []Count            `json:"top_hits"`
	Failures  []Count            `json:"filter_failures_total"`
	Reloads   []Count            `json:"reloads_total"`
	CaptureOn *bool              `json:"capture_switch_on,omitempty"`
	Captured  []Count            `json:"capture_writes_total,omitempty"`
	Health    []Health           `json:"health"`
	LastHour  Span               `json:"last_hour"`
	LastDay   Span               `json:"last_day"`
	Recent    []metrics.Decision `json:"recent"`

	hour, day []metrics.Bucket
}

// Source gathers snapshots.
type Source struct {
	Gatherer prometheus.Gatherer
	Core     *metrics.Core
	Started  time.Time
	Version  string
	Now      func() time.Time

	mu     sync.Mutex
	config ConfigState
}

// SetConfig records the configuration's latest load.
func (s *Source) SetConfig(c ConfigState) {
	s.mu.Lock()
	s.config = c
	s.mu.Unlock()
}

// topHits is how many hits the page and the command list.
const topHits = 15

// Snapshot gathers the facts now.
func (s *Source) Snapshot() (*Snapshot, error) {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	s.mu.Lock()
	snap := &Snapshot{Now: now(), Started: s.Started, Version: s.Version, Config: s.config}
	s.mu.Unlock()
	families, err := s.Gatherer.Gather()
	if err != nil && len(families) == 0 {
		return nil, err
	}
	health := map[string]*Health{}
	for _, fam := range families {
		name := strings.TrimPrefix(fam.GetName(), metrics.Namespace+"_")
		for _, m := range fam.GetMetric() {
			v := value(m)
			switch {
			case name == "messages_total":
				snap.Messages = v
			case name == "sessions_in_flight":
				snap.InFlight = v
			case name == "verdicts_total":
				snap.Verdicts = append(snap.Verdicts, Count{joinLabels(m, "outcome", "filter"), v})
			case name == "hits_total":
				snap.TopHits = append(snap.TopHits, Count{joinLabels(m, "filter", "reason"), v})
			case name == "filter_failures_total":
				snap.Failures = append(snap.Failures, Count{joinLabels(m, "filter", "reason"), v})
			case name == "reloads_total":
				snap.Reloads = append(snap.Reloads, Count{joinLabels(m, "result"), v})
			case name == "capture_switch_on":
				on := v == 1
				snap.CaptureOn = &on
			case name == "capture_writes_total":
				snap.Captured = append(snap.Captured, Count{joinLabels(m, "result"), v})
			case strings.HasSuffix(name, "_up") || strings.HasSuffix(name, "_ping_seconds"):
				base := strings.TrimSuffix(strings.TrimSuffix(name, "_up"), "_ping_seconds")
				target := label(m, "target")
				h := health[base+" "+target]
				if h == nil {
					h = &Health{Name: strings.Replace(base, "_", " ", 1), Target: target}
					health[base+" "+target] = h
				}
				if strings.HasSuffix(name, "_up") {
					h.Up = v == 1
				} else {
					h.PingSeconds = v
				}
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(health)) {
		snap.Health = append(snap.Health, *health[k])
	}
	byValue := func(a, b Count) int { return cmp.Or(cmp.Compare(b.Value, a.Value), cmp.Compare(a.Key, b.Key)) }
	for _, l := range [][]Count{snap.Verdicts, snap.TopHits, snap.Failures, snap.Reloads, snap.Captured} {
		slices.SortFunc(l, byValue)
	}
	snap.TopHits = snap.TopHits[:min(len(snap.TopHits), topHits)]
	if s.Core != nil {
		snap.hour = s.Core.Activity.Series(60, time.Minute)
		snap.day = s.Core.Activity.Series(96, 15*time.Minute)
		snap.LastHour, snap.LastDay = span(snap.hour), span(snap.day)
		snap.Recent = s.Core.Activity.Recent()
	}
	return snap, nil
}

func span(buckets []metrics.Bucket) Span {
	var sp Span
	for _, b := range buckets {
		sp.Messages += b.Messages
	}
	keys, totals := metrics.TopReasons(buckets, topHits)
	for _, k := range keys {
		sp.Refusals = append(sp.Refusals, Count{k, float64(totals[k])})
	}
	return sp
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// joinLabels is the labels' values as the summary's keys: "rejected:virus".
func joinLabels(m *dto.Metric, names ...string) string {
	var parts []string
	for _, n := range names {
		if v := label(m, n); v != "" {
			parts = append(parts, v)
		}
	}
	return strings.Join(parts, ":")
}
