// Package filters is the filter registry. Each filter's folder owns its
// configuration section, defaults, example and constructor, and registers
// them here once (Register, from its init); the line that imports the
// folder is in package filters/all. This package then reads configuration
// files for every registered filter and builds the pipeline a
// configuration describes, in the configured order.
package filters

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"mailguard/etc"
	"mailguard/internal/config"
	"mailguard/internal/pipeline"
)

// Spec is what a filter registers.
type Spec struct {
	Name string
	// NewSection returns the filter's [Name] section with its defaults.
	NewSection func() config.Section
	// New builds the filter from its checked section.
	New func(s config.Section, b *Env) (pipeline.Filter, error)
	// Example is the section as the example configuration documents it:
	// "[Name]" and every key at its default, with comments.
	Example string
}

var registry = map[string]Spec{}

// commandTimeout is how long an MTA waits for a milter's answer to one
// command before the end of the message: Postfix's milter_command_timeout
// and Sendmail's R= timeout default to 30 s.
const commandTimeout = 30 * time.Second

// Register adds a filter. It is called from the filter package's init, so
// it panics on a programming error (a name registered twice).
func Register[S config.Section](name string, defaults func() S, build func(S, *Env) (pipeline.Filter, error), example string) {
	if _, dup := registry[name]; dup {
		panic("filters: " + name + " registered twice")
	}
	registry[name] = Spec{
		Name:       name,
		NewSection: func() config.Section { return defaults() },
		New:        func(s config.Section, b *Env) (pipeline.Filter, error) { return build(s.(S), b) },
		Example:    example,
	}
}

// RegisterService adds a section that configures something other than a
// filter (a front door such as the Dovecot policy server): it is read,
// checked and documented like a filter's, but never built into the
// pipeline. Its Validate gets enabled = false; the service decides from
// its own keys whether it runs.
func RegisterService[S config.Section](name string, defaults func() S, example string) {
	if _, dup := registry[name]; dup {
		panic("filters: " + name + " registered twice")
	}
	registry[name] = Spec{Name: name, NewSection: func() config.Section { return defaults() }, Example: example}
}

// Lookup returns a registered filter's spec.
func Lookup(name string) (Spec, bool) {
	s, ok := registry[name]
	return s, ok
}

// Names lists the registered filters, sorted.
func Names() []string { return slices.Sorted(maps.Keys(registry)) }

// Sections is every registered filter's section constructor.
func Sections() config.Sections {
	out := config.Sections{}
	for name, s := range registry {
		out[name] = s.NewSection
	}
	return out
}

// Default is the built-in configuration.
func Default() *config.Config { return config.Default(Sections()) }

// Load reads a configuration file with every registered filter's section.
func Load(path string) (*config.Config, error) { return config.Load(path, Sections()) }

// Parse reads configuration text with every registered filter's section.
func Parse(file string, data []byte) (*config.Config, error) {
	return config.Parse(file, data, Sections())
}

// ExampleConfig is the complete example configuration: the global keys,
// then every registered filter's section.
func ExampleConfig() string {
	var b strings.Builder
	b.Write(etc.ExampleConfig)
	for _, name := range Names() {
		b.WriteString("\n")
		b.WriteString(strings.TrimSpace(registry[name].Example))
		b.WriteString("\n")
	}
	return b.String()
}

// Env is what a filter's constructor gets: the pipeline's environment, and
// a way to place an error at a key of its section.
type Env struct {
	pipeline.Env
	cfg       *config.Config
	name      string
	checkOnly bool
	opts      BuildOptions
}

// CheckOnly reports a build for check-config: the filter checks what it
// would use but changes nothing on disk (creates no directory).
func (b *Env) CheckOnly() bool { return b.checkOnly }

// Offline reports a build for `mailguard scan`: the filter must change
// nothing that live daemons share (a counter in Redis); it counts in
// memory of its own instead, and says so in its Summary.
func (b *Env) Offline() bool { return b.opts.Offline }

// Predecessor is the filter of the same name in the pipeline a reload
// replaces, or nil. A filter takes over its long-lived parts (counters,
// caches, pools, clients) where the settings they were made with did not
// change (see package shared), so a reload resets no limit and reopens
// nothing. The predecessor keeps serving its open connections until its
// pipeline is closed, so what is taken is shared, never moved.
func (b *Env) Predecessor() pipeline.Filter {
	if b.checkOnly || b.opts.Offline {
		return nil
	}
	return b.opts.Predecessor.Filter(b.name)
}

// Warn records a problem that does not stop the filter, at the key's
// line; check-config prints it, and the daemon logs it at start and reload.
func (b *Env) Warn(key, format string, args ...any) {
	full := b.name + "." + key
	b.cfg.Warnings = append(b.cfg.Warnings, fmt.Sprintf("%s:%d: %s: %s", b.cfg.File, b.cfg.Line(full), full, fmt.Sprintf(format, args...)))
}

// MaxFileSize bounds each data file the filter reads (max_file_size).
func (b *Env) MaxFileSize() int64 { return b.cfg.MaxFileSize }

// KeyError places err (a file the key names failed to load, say) at the
// key's line, unless err is already placed (an error of type E, such as
// a parser's own file:line error).
func KeyError[E error](b *Env, key string, err error) error {
	var own E
	if err == nil || errors.As(err, &own) {
		return err
	}
	full := b.name + "." + key
	return &config.Error{File: b.cfg.File, Line: b.cfg.Line(full), Msg: full + ": " + err.Error()}
}

// Check builds every configured filter as Build does, for check-config:
// every file is read and checked, and nothing on disk is changed.
func Check(c *config.Config, env pipeline.Env) error {
	p, err := build(c, env, true, BuildOptions{})
	if p != nil {
		p.Close()
	}
	return err
}

// Build constructs the pipeline. Its error joins every problem found, each
// naming a file and line where it can.
func Build(c *config.Config, env pipeline.Env) (*pipeline.Pipeline, error) {
	return build(c, env, false, BuildOptions{})
}

// BuildOptions say what a pipeline is built for.
type BuildOptions struct {
	// Predecessor is the pipeline a reload replaces: its filters hand
	// their long-lived parts to the new ones (Env.Predecessor).
	Predecessor *pipeline.Pipeline
	// Offline builds for `mailguard scan` (Env.Offline).
	Offline bool
}

// BuildWith is Build for a reload or a scan.
func BuildWith(c *config.Config, env pipeline.Env, opts BuildOptions) (*pipeline.Pipeline, error) {
	return build(c, env, false, opts)
}

func build(c *config.Config, env pipeline.Env, checkOnly bool, opts BuildOptions) (p *pipeline.Pipeline, err error) {
	var (
		members []pipeline.Member
		errs    []error
	)
	for _, name := range c.Filters {
		spec, ok := registry[name]
		sec := c.Sections[name]
		if !ok || sec == nil {
			errs = append(errs, &config.Error{File: c.File, Line: c.Line("filters"), Msg: fmt.Sprintf("unknown filter %q", name)})
			continue
		}
		if spec.New == nil {
			errs = append(errs, &config.Error{File: c.File, Line: c.Line("filters"), Msg: fmt.Sprintf("%q is not a filter: its section [%s] configures it", name, name)})
			continue
		}
		f, err := spec.New(sec, &Env{Env: env, cfg: c, name: name, checkOnly: checkOnly, opts: opts})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// From here on the filter holds its parts: a later failure closes it.
		members = append(members, pipeline.Member{Filter: f})
		common := config.CommonOf(sec)
		if _, decides := f.Stages(); decides&^pipeline.StageEndOfMessage != 0 && common.Timeout.Duration >= commandTimeout {
			key := name + ".timeout"
			errs = append(errs, &config.Error{File: c.File, Line: c.Line(key), Msg: fmt.Sprintf(
				"%s: %s is too long for a filter that answers before the end of the message: the MTA waits at most %s for each of those answers (Postfix's milter_command_timeout); at most %s",
				key, common.Timeout.Duration, commandTimeout, commandTimeout-time.Second)})
			continue
		}
		// The section was checked: these parse.
		onError, _ := pipeline.ParseErrorPolicy(common.OnError)
		mode, _ := pipeline.ParseMode(common.Mode)
		members[len(members)-1] = pipeline.Member{Filter: f, OnError: onError, Mode: mode, Timeout: common.Timeout.Duration}
	}
	if len(errs) > 0 {
		// What was built goes: the parts it took from a predecessor are
		// released (the predecessor still holds them).
		pipeline.New(env, members...).Close()
		return nil, errors.Join(errs...)
	}
	env.MaxRecipients = c.MaxRecipients
	return pipeline.New(env, members...), nil
}
