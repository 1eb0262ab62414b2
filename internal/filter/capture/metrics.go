package capture

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"mailguard/internal/filters"
	"mailguard/internal/metrics"
)

func init() { filters.RegisterMetrics(Name, newCollector) }

// collector reports the switch and the copies. The copies are counted by
// each filter; when a reload replaces the filter, what the old one
// counted until the first scrape after the reload is carried over, so the
// totals never go back. (Copies the old filter writes after that, for
// the sessions it still serves, are not counted here; the log has them.)
type collector struct {
	current    filters.Current
	on, writes *prometheus.Desc
	mu         sync.Mutex
	last       *Filter
	carried    [3]uint64
}

func newCollector(current filters.Current) prometheus.Collector {
	return &collector{current: current,
		on: prometheus.NewDesc(metrics.Namespace+"_capture_switch_on",
			"1 while capture's switch file exists (copies are being made), else 0.", nil, nil),
		writes: prometheus.NewDesc(metrics.Namespace+"_capture_writes_total",
			"Copies capture made (result written), lost to an error (failed), or left out as too large (skipped).", []string{"result"}, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) { ch <- c.on; ch <- c.writes }

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	f, _ := c.current().(*Filter)
	c.mu.Lock()
	if f != c.last && c.last != nil {
		for i, n := range counts(c.last) {
			c.carried[i] += n
		}
	}
	c.last = f
	totals := c.carried
	if f != nil {
		for i, n := range counts(f) {
			totals[i] += n
		}
	}
	seen := c.carried != [3]uint64{}
	c.mu.Unlock()
	if f == nil && !seen {
		return // capture does not run, and never did
	}
	for i, result := range []string{"written", "failed", "skipped"} {
		ch <- prometheus.MustNewConstMetric(c.writes, prometheus.CounterValue, float64(totals[i]), result)
	}
	if f == nil {
		return // not running now: no switch to report
	}
	on := 0.0
	if f.on() {
		on = 1
	}
	ch <- prometheus.MustNewConstMetric(c.on, prometheus.GaugeValue, on)
}

func counts(f *Filter) [3]uint64 {
	return [3]uint64{f.Written.Load(), f.Failed.Load(), f.Skipped.Load()}
}
