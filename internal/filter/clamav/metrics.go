package clamav

import (
	"context"
	"errors"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"mailguard/internal/filters"
	"mailguard/internal/metrics"
)

// clamd's health: a PING to every clamd of the pool at each scrape.
func init() {
	filters.RegisterMetrics(Name, func(current filters.Current) prometheus.Collector {
		return metrics.NewHealth(Name, "clamd", "every clamd of the pool", func(ctx context.Context) (string, error, bool) {
			f, ok := current().(*Filter)
			if !ok {
				return "", nil, false
			}
			pool := f.pool.Value()
			var addrs []string
			for _, a := range pool.Addresses() {
				addrs = append(addrs, a.String())
			}
			return strings.Join(addrs, ","), errors.Join(pool.Ping(ctx)...), true
		})
	})
}
