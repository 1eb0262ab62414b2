package outbreak

import (
	"context"
	_ "embed"
	"fmt"
	"slices"
	"strings"
	"time"

	"mailguard/internal/clientrule"
	"mailguard/internal/config"
	"mailguard/internal/filters"
	"mailguard/internal/mimewalk"
	"mailguard/internal/ownmaildir"
	"mailguard/internal/pipeline"
	"mailguard/internal/shared"
)

func init() { filters.Register(Name, defaults, build, example) }

// Config is the [outbreak] section.
type Config struct {
	config.Common
	// Backend is "memory" or a Redis URL.
	Backend     string          `toml:"backend"`
	Window      config.Duration `toml:"window"`
	MinNetworks int64           `toml:"min_networks"`
	Hold        config.Duration `toml:"hold"`
	Action      string          `toml:"action"`
	Samples     string          `toml:"samples"`
	MaxSamples  int             `toml:"max_samples"`
	Exempt      []string        `toml:"exempt"`
	Kinds       []string        `toml:"kinds"`
	// MaxFingerprints bounds the memory backend's keys.
	MaxFingerprints int         `toml:"max_fingerprints"`
	SampleMemory    config.Size `toml:"sample_memory"`
}

//go:embed example.toml
var example string

func defaults() *Config {
	return &Config{
		Common: config.NewCommon("accept"), Backend: "memory",
		Window: config.Duration{Duration: 30 * time.Minute}, MinNetworks: 10, Hold: config.Duration{Duration: 6 * time.Hour},
		Action: "tempfail", Samples: "/var/lib/mailguard/outbreak", MaxSamples: 50, Exempt: []string{},
		Kinds: slices.Clone(DefaultKinds), MaxFingerprints: 1000000, SampleMemory: config.Size{Bytes: 64 << 20},
	}
}

// maxSampleSize: a message larger than this is not kept for the samples
// (worms are small; its fingerprints still count).
const maxSampleSize = 10 << 20

// Validate checks the section.
func (c *Config) Validate(v *config.Checker, enabled bool) {
	if c.Backend != "memory" && !strings.HasPrefix(c.Backend, "redis://") && !strings.HasPrefix(c.Backend, "rediss://") && !strings.HasPrefix(c.Backend, "unix://") {
		v.Fail("backend", `%q: want "memory" or a Redis URL such as "redis://127.0.0.1:6379/0"`, c.Backend)
	}
	if c.Window.Duration < 4*time.Second || c.Window.Duration > 7*24*time.Hour {
		v.Fail("window", "want a duration from 4s to 168h, such as \"30m\"")
	}
	if c.MinNetworks < 2 || c.MinNetworks > 100 {
		v.Fail("min_networks", "want 2 to 100")
	}
	if c.Hold.Duration < time.Second || c.Hold.Duration > 30*24*time.Hour {
		v.Fail("hold", "want a duration from 1s to 720h, such as \"6h\"")
	}
	v.OneOf("action", c.Action, "tempfail", "reject")
	v.Path("samples", &c.Samples)
	if strings.TrimSpace(c.Samples) == "" {
		v.Fail("samples", "want a folder for the samples Maildir and the control socket")
	} else if len(ControlSocket(c.Samples)) > maxSocketPath {
		v.Fail("samples", "%s is too long a path for the control socket in it (at most %d bytes with \"/control\")", c.Samples, maxSocketPath)
	}
	if c.MaxSamples < 0 || c.MaxSamples > 10000 {
		v.Fail("max_samples", "want 0 to 10000")
	}
	if _, errs := clientrule.ParseList(c.Exempt); len(errs) > 0 {
		for _, err := range errs {
			v.Fail("exempt", "%v", err)
		}
	}
	if len(c.Kinds) == 0 {
		v.Fail("kinds", "want at least one of %s", strings.Join(AllKinds, ", "))
	}
	for _, k := range c.Kinds {
		if !slices.Contains(AllKinds, k) {
			v.Fail("kinds", "%q: want %s", k, strings.Join(AllKinds, ", "))
		}
	}
	if c.MaxFingerprints < 1000 || c.MaxFingerprints > 100000000 {
		v.Fail("max_fingerprints", "want 1000 to 100000000")
	}
	if c.SampleMemory.Bytes < 1<<20 {
		v.Fail("sample_memory", "want at least 1M")
	}
}

// storeKey names the settings a store is made with.
func (c *Config) storeKey() string {
	return fmt.Sprintf("%s|%s|%d|%s|%d|%d|%d", c.Backend, c.Window.Duration, c.MinNetworks, c.Hold.Duration, c.MaxFingerprints, c.MaxSamples, c.SampleMemory.Bytes)
}

func (c *Config) settings() Settings {
	return Settings{Window: c.Window.Duration, MinNetworks: c.MinNetworks, Hold: c.Hold.Duration}
}

// OpenStore opens the store a section names, for the CLI: Redis
// directly; nil for memory (the daemon's control socket serves it).
func OpenStore(c *Config) (Store, error) {
	if c.Backend == "memory" {
		return nil, nil
	}
	return NewRedis(c.Backend, c.settings(), nil)
}

func build(c *Config, b *filters.Env) (pipeline.Filter, error) {
	prepare := ownmaildir.Prepare
	if b.CheckOnly() || b.Offline() {
		prepare = ownmaildir.Check
	}
	if err := prepare(c.Samples); err != nil {
		return nil, filters.KeyError[*config.Error](b, "samples", err)
	}
	backend := "memory"
	if c.Backend != "memory" {
		rc, err := NewRedis(c.Backend, c.settings(), b.Now)
		if err != nil {
			return nil, filters.KeyError[*config.Error](b, "backend", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := rc.Ping(ctx); err != nil {
			b.Warn("backend", "Redis at %s does not answer (%v); until it does, the filter follows on_error = %q", rc.Addr(), err, c.OnError)
		}
		backend = "Redis at " + rc.Addr()
		rc.Close()
	}
	exempt, _ := clientrule.ParseList(c.Exempt)
	kinds := Kinds{}
	for _, k := range c.Kinds {
		kinds[k] = true
	}
	opts := Options{
		Settings: c.settings(), Backend: backend, Reject: c.Action == "reject", Monitor: c.Mode == "monitor",
		Kinds: kinds, Exempt: exempt, Limits: mimewalk.Options{MaxDecoded: 64 << 20},
		Log: b.Log, Stats: b.Stats,
	}
	if b.CheckOnly() || b.Offline() {
		// check-config and scan open nothing: no Redis, no socket; a
		// scan counts in memory of its own.
		opts.Store = NewMemory(c.settings(), c.MaxFingerprints, b.Now)
		opts.samples = newSamples(c.Samples, 0, c.SampleMemory.Bytes, maxSampleSize, c.Window.Duration, now(b))
		if b.Offline() {
			opts.Backend = "memory of this scan"
		}
		return &Filter{opts: opts, backend: shared.New(&backendState{opts.Store, opts.samples}, "", nil)}, nil
	}
	var backendRef *shared.Ref[*backendState]
	var ctl *shared.Ref[*control]
	if old, ok := b.Predecessor().(*Filter); ok {
		backendRef = shared.TakeOver(old.backend, c.storeKey())
		ctl = shared.TakeOver(old.ctl, c.Samples)
		if backendRef == nil {
			b.Log.Warn("outbreak: settings changed: counts and kept copies start afresh", "samples", c.Samples)
		}
	}
	if backendRef == nil {
		var store Store
		if c.Backend == "memory" {
			store = NewMemory(c.settings(), c.MaxFingerprints, b.Now)
		} else {
			rc, err := NewRedis(c.Backend, c.settings(), b.Now)
			if err != nil {
				return nil, filters.KeyError[*config.Error](b, "backend", err)
			}
			store = rc
		}
		smp := newSamples(c.Samples, c.MaxSamples, c.SampleMemory.Bytes, maxSampleSize, c.Window.Duration, now(b))
		backendRef = shared.New(&backendState{store, smp}, c.storeKey(), closeBackend)
	}
	if ctl == nil {
		ctl = openControl(c.Samples, b.Log)
	}
	st := backendRef.Value()
	opts.Store, opts.samples = st.store, st.samples
	f := &Filter{opts: opts, backend: backendRef, ctl: ctl}
	ctl.Value().serve(f, st.store)
	return f, nil
}

func now(b *filters.Env) func() time.Time {
	if b.Now == nil {
		return time.Now
	}
	return b.Now
}
