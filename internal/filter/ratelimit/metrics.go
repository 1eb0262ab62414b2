package ratelimit

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"mailguard/internal/filters"
	"mailguard/internal/metrics"
)

// Redis's health, where the counters live in Redis: a PING at each
// scrape. The limits' refusals are mailguard_hits_total{filter="ratelimit"}.
func init() {
	filters.RegisterMetrics(Name, func(current filters.Current) prometheus.Collector {
		return metrics.NewHealth(Name, "redis", "Redis", func(ctx context.Context) (string, error, bool) {
			f, ok := current().(*Filter)
			if !ok {
				return "", nil, false
			}
			r, ok := f.counter.Value().(interface {
				Addr() string
				Ping(context.Context) error
			})
			if !ok {
				return "", nil, false // counting in memory
			}
			return r.Addr(), r.Ping(ctx), true
		})
	})
}
