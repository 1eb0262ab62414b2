package filters

import (
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"mailguard/internal/pipeline"
)

// Current returns the filter of a name in the pipeline now serving, or
// nil when the configuration does not run it.
type Current func() pipeline.Filter

var collectors = map[string]func(Current) prometheus.Collector{}

// RegisterMetrics adds a filter's own metrics, from the filter's
// metrics.go (its init). The collector is made and registered once per
// daemon and reads, at each scrape, the filter that serves then: a reload
// registers nothing again, and a filter holds no metrics of its own.
func RegisterMetrics(name string, collector func(Current) prometheus.Collector) {
	if _, dup := collectors[name]; dup {
		panic("filters: metrics of " + name + " registered twice")
	}
	collectors[name] = collector
}

// RegisterCollectors registers every filter's own metrics on reg, each
// reading its filter from the pipeline current returns.
func RegisterCollectors(reg prometheus.Registerer, current func() *pipeline.Pipeline) error {
	for _, name := range slices.Sorted(maps.Keys(collectors)) {
		c := collectors[name](func() pipeline.Filter { return current().Filter(name) })
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
