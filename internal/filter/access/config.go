package access

import (
	_ "embed"
	"net"
	"time"

	"mailguard/internal/clientrule"
	"mailguard/internal/config"
	"mailguard/internal/dnsbl"
	"mailguard/internal/filters"
	"mailguard/internal/pipeline"
)

func init() { filters.Register(Name, defaults, build, example) }

// Config is the [access] section.
type Config struct {
	config.Common
	Allow               []string        `toml:"allow"`
	Deny                []string        `toml:"deny"`
	DenyReply           string          `toml:"deny_reply"`
	DNSBL               []string        `toml:"dnsbl"`
	DNSBLThreshold      int             `toml:"dnsbl_threshold"`
	DNSBLTimeout        config.Duration `toml:"dnsbl_timeout"`
	DNSServer           string          `toml:"dns_server"`
	ExemptAuthenticated bool            `toml:"exempt_authenticated"`
	ExemptDaemons       []string        `toml:"exempt_daemons"`
	DecideAt            string          `toml:"decide_at"`
}

//go:embed example.toml
var example string

func defaults() *Config {
	return &Config{
		Common: config.NewCommon("accept"), Allow: []string{}, Deny: []string{}, DenyReply: "reject",
		DNSBL: []string{}, DNSBLThreshold: 1, DNSBLTimeout: config.Duration{Duration: 2 * time.Second},
		ExemptAuthenticated: true, ExemptDaemons: []string{}, DecideAt: "",
	}
}

// Validate checks the section.
func (c *Config) Validate(v *config.Checker, enabled bool) {
	for key, list := range map[string][]string{"allow": c.Allow, "deny": c.Deny} {
		if _, errs := clientrule.ParseList(list); len(errs) > 0 {
			for _, err := range errs {
				v.Fail(key, "%v", err)
			}
		}
	}
	v.OneOf("deny_reply", c.DenyReply, "reject", "close")
	for _, s := range c.DNSBL {
		if _, err := dnsbl.ParseSite(s); err != nil {
			v.Fail("dnsbl", "%v", err)
		}
	}
	if c.DNSBLThreshold < 1 {
		v.Fail("dnsbl_threshold", "want 1 or more")
	}
	if c.DNSBLTimeout.Duration <= 0 || c.DNSBLTimeout.Duration >= c.Timeout.Duration {
		v.Fail("dnsbl_timeout", "want more than 0 and less than timeout (%s)", c.Timeout.Duration)
	}
	if c.DNSServer != "" {
		if _, _, err := net.SplitHostPort(c.DNSServer); err != nil {
			v.Fail("dns_server", "%q: want HOST:PORT, such as 127.0.0.1:53", c.DNSServer)
		}
	}
	if c.DecideAt != "" {
		v.OneOf("decide_at", c.DecideAt, AtConnect, AtMail, AtRcpt)
		if c.DecideAt == AtConnect && c.ExemptAuthenticated {
			v.Fail("decide_at", `"connect" comes before the client can log in: exempt_authenticated needs "mail" or "rcpt" (or set exempt_authenticated = false)`)
		}
	}
}

func build(c *Config, b *filters.Env) (pipeline.Filter, error) {
	allow, _ := clientrule.ParseList(c.Allow) // checked
	deny, _ := clientrule.ParseList(c.Deny)
	var sites []dnsbl.Site
	for _, s := range c.DNSBL {
		site, _ := dnsbl.ParseSite(s)
		sites = append(sites, site)
	}
	var resolver *dnsbl.Resolver
	if len(sites) > 0 {
		var err error
		if resolver, err = dnsbl.NewResolver(dnsbl.Options{Server: c.DNSServer, Now: b.Now}); err != nil {
			return nil, filters.KeyError[*config.Error](b, "dns_server", err)
		}
		// A reload keeps the answers cached so far when it asks the same
		// server: the lists' TTLs still hold.
		if old, ok := b.Predecessor().(*Filter); ok && old.opts.Resolver != nil && old.opts.Resolver.Server() == resolver.Server() {
			resolver = old.opts.Resolver
		}
	}
	decideAt := c.DecideAt
	if decideAt == "" {
		decideAt = AtConnect
		if c.ExemptAuthenticated {
			decideAt = AtMail
		}
	}
	return New(Options{
		Allow: allow, Deny: deny, Close: c.DenyReply == "close", Sites: sites, Threshold: c.DNSBLThreshold,
		DNSTimeout: c.DNSBLTimeout.Duration, Resolver: resolver, ExemptAuth: c.ExemptAuthenticated,
		ExemptDaemons: c.ExemptDaemons, DecideAt: decideAt, Stats: b.Stats,
	}), nil
}
