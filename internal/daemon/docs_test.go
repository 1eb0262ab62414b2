package daemon

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"mailguard/internal/filters"
	"mailguard/internal/metrics"
	"mailguard/internal/pipeline"
)

// descNames collects the names of what is registered on it.
type descNames struct{ names []string }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (d *descNames) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 64)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		if m := fqName.FindStringSubmatch(desc.String()); m != nil && strings.HasPrefix(m[1], "mailguard_") {
			d.names = append(d.names, m[1])
		}
	}
	return nil
}
func (d *descNames) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		d.Register(c)
	}
}
func (d *descNames) Unregister(prometheus.Collector) bool { return false }

// The README's metrics reference lists every metric mailguard has, and
// no other.
func TestMetricsReference(t *testing.T) {
	obs := newObserver(filters.Default(), "test")
	var got descNames
	families, _ := obs.reg.Gather()
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "mailguard_") {
			got.names = append(got.names, f.GetName())
		}
	}
	got.names = append(got.names, "mailguard_sessions_in_flight")
	metrics.NewCore(&got, time.Now) // its vectors are empty in a fresh registry
	filters.RegisterCollectors(&got, func() *pipeline.Pipeline { return nil })
	slices.Sort(got.names)
	got.names = slices.Compact(got.names)

	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, ref, _ := strings.Cut(string(readme), "#### Metrics reference")
	ref, _, _ = strings.Cut(ref, "\n## ")
	var listed []string
	for _, m := range regexp.MustCompile("`(mailguard_[a-z_]+)`").FindAllStringSubmatch(ref, -1) {
		listed = append(listed, m[1])
	}
	slices.Sort(listed)
	listed = slices.Compact(listed)
	for _, n := range got.names {
		if !slices.Contains(listed, n) {
			t.Errorf("README's metrics reference lacks %s", n)
		}
	}
	for _, n := range listed {
		if !slices.Contains(got.names, n) {
			t.Errorf("README's metrics reference lists %s, which mailguard does not have", n)
		}
	}
}
