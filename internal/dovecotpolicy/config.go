package dovecotpolicy

import (
	_ "embed"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"mailguard/internal/config"
	"mailguard/internal/filters"
	"mailguard/internal/listen"
)

func init() { filters.RegisterService(Name, defaults, example) }

// Name is the section's name, and the name the door's decisions and
// counters carry.
const Name = "dovecot_policy"

// Config is the [dovecot_policy] section.
type Config struct {
	config.Common
	// Listen is where Dovecot's auth_policy_server_url points; "" keeps
	// the door closed.
	Listen string `toml:"listen"`
	// APIKey is Dovecot's auth_policy_server_api_header, as written
	// there: "Header: value", or a bare value (sent as X-API-Key).
	APIKey  string `toml:"api_key"`
	Backend string `toml:"backend"`
	// Exempt lists clients (addresses, networks) no rule applies to.
	Exempt []string `toml:"exempt"`
	// RememberSuccess is how long a successful login's user and password
	// hash exempt later logins with the same pair.
	RememberSuccess config.Duration `toml:"remember_success"`
	// Message is what Dovecot is told with a refusal.
	Message string       `toml:"message"`
	Rules   []RuleConfig `toml:"rule"`
}

// RuleConfig is one [[dovecot_policy.rule]].
type RuleConfig struct {
	Name        string `toml:"name"`
	Event       string `toml:"event"`
	Key         string `toml:"key"`
	Limit       int64  `toml:"limit"`
	RejectLimit int64  `toml:"reject_limit"`
	Window      string `toml:"window"`
	Action      string `toml:"action"`
}

//go:embed example.toml
var example string

// maxTimeout keeps a decision within Dovecot's patience:
// auth_policy_server_timeout_msecs is 2000 by default.
const maxTimeout = 10 * time.Second

func defaults() *Config {
	c := &Config{Common: config.NewCommon("accept"), Backend: "memory", Exempt: []string{},
		RememberSuccess: config.Duration{Duration: 24 * time.Hour},
		Message:         "Too many failed logins, try again later", Rules: []RuleConfig{}}
	c.Timeout = config.Duration{Duration: time.Second}
	return c
}

// Validate checks the section.
func (c *Config) Validate(v *config.Checker, _ bool) {
	if c.Listen != "" {
		if _, err := listen.Parse(c.Listen); err != nil {
			v.Fail("listen", "%v", err)
		}
	} else if v.Has("listen") {
		v.Fail("listen", `must not be empty (leave the key out to keep the door closed)`)
	}
	if strings.ContainsAny(c.APIKey, "\r\n") {
		v.Fail("api_key", "must be one line")
	}
	if c.Backend != "memory" && !strings.HasPrefix(c.Backend, "redis://") && !strings.HasPrefix(c.Backend, "rediss://") && !strings.HasPrefix(c.Backend, "unix://") {
		v.Fail("backend", `%q: want "memory" or a Redis URL such as "redis://127.0.0.1:6379/0"`, c.Backend)
	}
	if _, err := parseExempt(c.Exempt); err != nil {
		v.Fail("exempt", "%v", err)
	}
	if c.OnError == "tempfail" {
		v.Fail("on_error", `Dovecot's policy protocol has no "try later": want "accept" (allow the login) or "reject"`)
	}
	if c.Timeout.Duration > maxTimeout {
		v.Fail("timeout", "%s: at most %s, and under Dovecot's auth_policy_server_timeout_msecs (2 s by default)", c.Timeout.Duration, maxTimeout)
	}
	if c.RememberSuccess.Duration > 7*24*time.Hour {
		v.Fail("remember_success", "at most 168h")
	}
	if strings.TrimSpace(c.Message) == "" || len(c.Message) > 200 || strings.ContainsAny(c.Message, "\r\n\t") {
		v.Fail("message", "want 1 to 200 characters on one line")
	}
	names := map[string]bool{}
	for i, rc := range c.Rules {
		r, err := rc.parse()
		if err == nil && names[r.Name] {
			err = fmt.Errorf("name %q is used twice", r.Name)
		}
		if err != nil {
			v.Fail("rule", "rule %d: %v", i+1, err)
			continue
		}
		names[r.Name] = true
	}
	if c.Listen != "" && len(c.Rules) == 0 {
		v.Fail("listen", "the door needs at least one [[dovecot_policy.rule]] with event, key, limit, window, action")
	}
}

// parseExempt reads addresses and networks (Dovecot sends an address,
// never a host name).
func parseExempt(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		t := strings.TrimSpace(s)
		if a, err := netip.ParseAddr(t); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(t)
		if err != nil {
			return nil, fmt.Errorf("%q: want an address or a network such as 192.0.2.0/24 or 2001:db8::/32", s)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("%q has host bits set; the network is %s", s, p.Masked())
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p)
	}
	return out, nil
}

func (rc RuleConfig) parse() (Rule, error) {
	r := Rule{Name: rc.Name, Event: Event(rc.Event), Key: Key(rc.Key), Limit: rc.Limit}
	switch r.Event {
	case Login, Failure:
	default:
		return r, fmt.Errorf("event %q: want login (every attempt) or failure (failed attempts)", rc.Event)
	}
	switch r.Key {
	case KeyClient, KeyNetwork, KeyUser:
	default:
		return r, fmt.Errorf("key %q: want client, network or user", rc.Key)
	}
	if r.Limit < 1 {
		return r, fmt.Errorf("limit %d: want 1 or more", r.Limit)
	}
	w, err := time.ParseDuration(rc.Window)
	if err != nil || w < time.Second || w > 7*24*time.Hour {
		return r, fmt.Errorf("window %q: want a duration from 1s to 168h, such as \"10m\"", rc.Window)
	}
	r.Window = w
	if err := r.parseAction(rc.Action); err != nil {
		return r, err
	}
	switch {
	case r.Delay > 0 && r.Reject:
		r.RejectLimit = rc.RejectLimit
		if r.RejectLimit == 0 {
			r.RejectLimit = 2 * r.Limit
		}
		if r.RejectLimit <= r.Limit {
			return r, fmt.Errorf("reject_limit %d: want more than limit (%d)", r.RejectLimit, r.Limit)
		}
	case rc.RejectLimit != 0:
		return r, fmt.Errorf("reject_limit is for action \"delay:D,reject\"")
	case r.Reject:
		r.RejectLimit = r.Limit
	}
	if r.Name == "" {
		r.Name = fmt.Sprintf("%s-per-%s", r.Event, r.Key)
	}
	return r, nil
}

// maxDelay bounds a delay: Dovecot holds the login that long.
const maxDelay = 5 * time.Minute

// parseAction reads "delay:5s", "reject", "delay:5s,reject".
func (r *Rule) parseAction(a string) error {
	bad := fmt.Errorf("action %q: want delay:D (whole seconds, 1s to 5m), reject, or delay:D,reject (delay past limit, refuse past reject_limit)", a)
	parts := strings.Split(a, ",")
	if len(parts) > 2 {
		return bad
	}
	if d, ok := strings.CutPrefix(parts[0], "delay:"); ok {
		delay, err := time.ParseDuration(d)
		// Dovecot's answer counts whole seconds.
		if err != nil || delay < time.Second || delay > maxDelay || delay%time.Second != 0 {
			return bad
		}
		r.Delay = delay
		parts = parts[1:]
	}
	switch {
	case len(parts) == 1 && parts[0] == "reject":
		r.Reject = true
	case len(parts) != 0:
		return bad
	}
	return nil
}
