package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// HealthTimeout bounds one health probe made at a scrape.
const HealthTimeout = 2 * time.Second

// Health is a collector for one outside service a filter depends on
// (clamd, Redis, a DNS server): at each scrape it probes the service and
// reports mailguard_<filter>_<service>_up (1 or 0) and
// mailguard_<filter>_<service>_ping_seconds (the probe's round trip).
type Health struct {
	up, rtt *prometheus.Desc
	probe   func(ctx context.Context) (target string, err error, ok bool)
}

// NewHealth makes the collector. probe returns the service's address and
// the probe's error; ok false means the filter does not run now (nothing
// is reported).
func NewHealth(filter, service, what string, probe func(ctx context.Context) (target string, err error, ok bool)) *Health {
	prefix := Namespace + "_" + filter + "_" + service
	return &Health{
		up:    prometheus.NewDesc(prefix+"_up", "1 if "+what+" answered the probe made at this scrape, else 0.", []string{"target"}, nil),
		rtt:   prometheus.NewDesc(prefix+"_ping_seconds", "Round trip of the probe of "+what+" made at this scrape.", []string{"target"}, nil),
		probe: probe,
	}
}

func (h *Health) Describe(ch chan<- *prometheus.Desc) { ch <- h.up; ch <- h.rtt }

func (h *Health) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), HealthTimeout)
	defer cancel()
	start := time.Now()
	target, err, ok := h.probe(ctx)
	if !ok {
		return
	}
	up := 1.0
	if err != nil {
		up = 0
	}
	ch <- prometheus.MustNewConstMetric(h.up, prometheus.GaugeValue, up, target)
	ch <- prometheus.MustNewConstMetric(h.rtt, prometheus.GaugeValue, time.Since(start).Seconds(), target)
}
