package virus

import (
	"github.com/prometheus/client_golang/prometheus"

	"mailguard/internal/filters"
	"mailguard/internal/metrics"
)

// The filter's own metrics. Its hits per signature are the pipeline's
// mailguard_hits_total{filter="virus",reason=SIGNATURE}, the summary's keys.
func init() { filters.RegisterMetrics(Name, newCollector) }

type collector struct {
	current filters.Current
	sigs    *prometheus.Desc
}

func newCollector(current filters.Current) prometheus.Collector {
	return &collector{current: current, sigs: prometheus.NewDesc(metrics.Namespace+"_virus_signatures",
		"Signatures the running virus filter has loaded.", nil, nil)}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) { ch <- c.sigs }

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	if f, ok := c.current().(*Filter); ok {
		ch <- prometheus.MustNewConstMetric(c.sigs, prometheus.GaugeValue, float64(f.count))
	}
}
