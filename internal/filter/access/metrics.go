package access

import (
	"context"
	"errors"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"mailguard/internal/filters"
	"mailguard/internal/metrics"
)

// The DNS server's health, where there are DNS blocklists: at each scrape
// a query for 127.0.0.2 in the first blocklist's zone (RFC 5782's test
// entry); any answer, listed or not, counts as up.
func init() {
	filters.RegisterMetrics(Name, func(current filters.Current) prometheus.Collector {
		return metrics.NewHealth(Name, "dns", "the DNS server", func(ctx context.Context) (string, error, bool) {
			f, ok := current().(*Filter)
			if !ok || f.opts.Resolver == nil || len(f.opts.Sites) == 0 {
				return "", nil, false
			}
			server := f.opts.Resolver.Server()
			m := new(dns.Msg)
			m.SetQuestion(dns.Fqdn("2.0.0.127."+f.opts.Sites[0].Zone), dns.TypeA)
			c := dns.Client{Timeout: metrics.HealthTimeout}
			r, _, err := c.ExchangeContext(ctx, m, server)
			if err == nil && r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
				err = errors.New("answered " + dns.RcodeToString[r.Rcode])
			}
			return server, err, true
		})
	})
}
