package ratelimit

import (
	"context"
	_ "embed"
	"fmt"
	"strings"
	"time"

	"mailguard/internal/clientrule"
	"mailguard/internal/config"
	"mailguard/internal/filters"
	"mailguard/internal/pipeline"
	"mailguard/internal/ratecount"
	"mailguard/internal/shared"
)

func init() { filters.Register(Name, defaults, build, example) }

// Config is the [ratelimit] section.
type Config struct {
	config.Common
	// Backend is "memory" or a redis:// URL.
	Backend             string       `toml:"backend"`
	Exempt              []string     `toml:"exempt"`
	ExemptAuthenticated bool         `toml:"exempt_authenticated"`
	MaxTarpitted        int          `toml:"max_tarpitted"`
	Rules               []RuleConfig `toml:"rule"`
}

// RuleConfig is one [[ratelimit.rule]].
type RuleConfig struct {
	Name   string `toml:"name"`
	Event  string `toml:"event"`
	Key    string `toml:"key"`
	Limit  int64  `toml:"limit"`
	Window string `toml:"window"`
	Action string `toml:"action"`
}

//go:embed example.toml
var example string

func defaults() *Config {
	c := &Config{Common: config.NewCommon("accept"), Backend: "memory", Exempt: []string{}, ExemptAuthenticated: true, MaxTarpitted: 100, Rules: []RuleConfig{}}
	// Room for a tarpit's delay under the MTA's 30 s.
	c.Timeout = config.Duration{Duration: 25 * time.Second}
	return c
}

// Validate checks the section.
func (c *Config) Validate(v *config.Checker, enabled bool) {
	if c.Backend != "memory" && !strings.HasPrefix(c.Backend, "redis://") && !strings.HasPrefix(c.Backend, "rediss://") && !strings.HasPrefix(c.Backend, "unix://") {
		v.Fail("backend", `%q: want "memory" or a Redis URL such as "redis://127.0.0.1:6379/0"`, c.Backend)
	}
	if _, errs := clientrule.ParseList(c.Exempt); len(errs) > 0 {
		for _, err := range errs {
			v.Fail("exempt", "%v", err)
		}
	}
	if c.MaxTarpitted < 1 || c.MaxTarpitted > 100000 {
		v.Fail("max_tarpitted", "want 1 to 100000")
	}
	names := map[string]bool{}
	for i, rc := range c.Rules {
		r, err := rc.parse()
		if err == nil && r.Delay > 0 && r.Delay+time.Second > c.Timeout.Duration {
			err = fmt.Errorf("tarpit delay %s must end at least 1s before timeout (%s), which must stay under the MTA's 30 s (Postfix's milter_command_timeout)", r.Delay, c.Timeout.Duration)
		}
		if err == nil && names[r.Name] {
			err = fmt.Errorf("name %q is used twice", r.Name)
		}
		if err != nil {
			v.Fail("rule", "rule %d: %v", i+1, err)
			continue
		}
		names[r.Name] = true
	}
	if enabled && len(c.Rules) == 0 {
		v.Require("rule", "", `[[ratelimit.rule]] with event, key, limit, window`)
	}
}

var events = map[string]Event{"connection": Connection, "message": Message, "recipient": Recipient, "byte": Byte, "concurrency": Concurrency}

func (rc RuleConfig) parse() (Rule, error) {
	r := Rule{Name: rc.Name, Limit: rc.Limit, Refusal: RefuseTempFail}
	ev, ok := events[rc.Event]
	if !ok {
		return r, fmt.Errorf("event %q: want connection, message, recipient, byte or concurrency", rc.Event)
	}
	r.Event = ev
	switch Key(rc.Key) {
	case KeyClient, KeyNetwork:
	case KeySender:
		if ev == Connection || ev == Concurrency {
			return r, fmt.Errorf("key \"sender\" is not known at connect: want client or network for %s", ev)
		}
	case KeyRecipient:
		if ev != Recipient {
			return r, fmt.Errorf("key \"recipient\" counts recipients only: want event = \"recipient\"")
		}
	default:
		return r, fmt.Errorf("key %q: want client, network, sender or recipient", rc.Key)
	}
	r.Key = Key(rc.Key)
	if r.Limit < 1 {
		return r, fmt.Errorf("limit %d: want 1 or more", r.Limit)
	}
	if ev != Concurrency {
		w, err := time.ParseDuration(rc.Window)
		if err != nil || w < time.Second || w > 7*24*time.Hour {
			return r, fmt.Errorf("window %q: want a duration from 1s to 168h, such as \"1m\"", rc.Window)
		}
		r.Window = w
	} else if rc.Window != "" {
		return r, fmt.Errorf("a concurrency limit has no window")
	}
	if err := r.parseAction(rc.Action); err != nil {
		return r, err
	}
	if r.Name == "" {
		r.Name = defaultName(r)
	}
	return r, nil
}

// parseAction reads "tempfail", "reject", "tarpit:10s", "tarpit:10s,tempfail".
func (r *Rule) parseAction(a string) error {
	bad := fmt.Errorf("action %q: want tempfail, reject, tarpit:DELAY (then go on) or tarpit:DELAY,tempfail / tarpit:DELAY,reject", a)
	parts := strings.Split(a, ",")
	if len(parts) > 2 {
		return bad
	}
	if d, ok := strings.CutPrefix(parts[0], "tarpit:"); ok {
		delay, err := time.ParseDuration(d)
		if err != nil || delay <= 0 {
			return bad
		}
		r.Delay, r.Refusal = delay, RefuseNone
		parts = parts[1:]
	} else if len(parts) > 1 {
		return bad
	}
	if len(parts) == 1 {
		switch parts[0] {
		case "tempfail", "":
			r.Refusal = RefuseTempFail
		case "reject":
			r.Refusal = RefuseReject
		default:
			return bad
		}
	}
	return nil
}

func build(c *Config, b *filters.Env) (pipeline.Filter, error) {
	var rules []Rule
	for _, rc := range c.Rules {
		r, _ := rc.parse() // checked
		rules = append(rules, r)
	}
	exempt, _ := clientrule.ParseList(c.Exempt)
	counter, backend, err := counterFor(c, b)
	if err != nil {
		return nil, err
	}
	var tarpit *shared.Ref[chan struct{}]
	if old, ok := b.Predecessor().(*Filter); ok {
		tarpit = shared.TakeOver(old.tarpit, tarpitKey(c.MaxTarpitted))
	}
	return New(Options{
		Rules: rules, SharedCounter: counter, Backend: backend, Exempt: exempt, ExemptAuth: c.ExemptAuthenticated,
		MaxTarpitted: c.MaxTarpitted, SharedTarpit: tarpit, Log: b.Log, Stats: b.Stats,
	}), nil
}

// counterFor is where the filter counts: the predecessor's counter when
// the backend did not change (so a reload resets no limit and opens no
// second Redis client), else a new one. A scan counts in memory of its
// own: it must not change what the live daemons share.
func counterFor(c *Config, b *filters.Env) (*shared.Ref[ratecount.Counter], string, error) {
	if b.Offline() {
		backend := "memory of this scan"
		if c.Backend != "memory" {
			backend += " (" + redisHost(c.Backend) + " not used)"
		}
		return shared.New[ratecount.Counter](ratecount.NewMemory(b.Now), "", nil), backend, nil
	}
	if old, ok := b.Predecessor().(*Filter); ok {
		if ref := shared.TakeOver(old.counter, c.Backend); ref != nil {
			if rc, ok := ref.Value().(*ratecount.Redis); ok {
				ping(rc, c, b)
			}
			return ref, old.opts.Backend, nil
		}
	}
	if c.Backend == "memory" {
		return shared.New[ratecount.Counter](ratecount.NewMemory(b.Now), c.Backend, nil), "memory", nil
	}
	rc, err := ratecount.NewRedis(c.Backend, b.Now)
	if err != nil {
		return nil, "", filters.KeyError[*config.Error](b, "backend", err)
	}
	ping(rc, c, b)
	return shared.New[ratecount.Counter](rc, c.Backend, closeCounter), "Redis at " + rc.Addr(), nil
}

// ping warns, at start, reload and check-config, of a Redis that does not
// answer.
func ping(rc *ratecount.Redis, c *Config, b *filters.Env) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := rc.Ping(ctx); err != nil {
		b.Warn("backend", "Redis at %s does not answer (%v); until it does, rate limits follow on_error = %q", rc.Addr(), err, c.OnError)
	}
}

// redisHost names a Redis URL's server without its password.
func redisHost(url string) string {
	if rc, err := ratecount.NewRedis(url, nil); err == nil {
		defer rc.Close()
		return "Redis at " + rc.Addr()
	}
	return "Redis"
}
