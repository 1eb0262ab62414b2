package capture

import (
	_ "embed"

	"mailguard/internal/addrpattern"
	"mailguard/internal/config"
	"mailguard/internal/filters"
	"mailguard/internal/pipeline"
)

func init() { filters.Register(Name, defaults, build, example) }

// Config is the [capture] section.
type Config struct {
	config.Common
	Switch          string      `toml:"switch"`
	Dir             string      `toml:"dir"`
	Recipients      []string    `toml:"recipients"`
	Senders         []string    `toml:"senders"`
	IncludeRejected bool        `toml:"include_rejected"`
	MaxSize         config.Size `toml:"max_size"` // 0 is no limit
}

//go:embed example.toml
var example string

func defaults() *Config {
	return &Config{Common: config.NewCommon("accept"), Recipients: []string{}, Senders: []string{}, MaxSize: config.Size{Bytes: 100 << 20}}
}

// Validate checks the section.
func (c *Config) Validate(v *config.Checker, enabled bool) {
	v.Path("switch", &c.Switch)
	v.Path("dir", &c.Dir)
	for key, list := range map[string][]string{"recipients": c.Recipients, "senders": c.Senders} {
		for _, a := range list {
			if err := addrpattern.Check(a); err != nil {
				v.Fail(key, "%v", err)
			}
		}
	}
	if enabled && (c.Switch == "" || c.Dir == "") {
		v.Require("switch", "", `"FILE" and dir = "DIR"`)
	}
}

func build(c *Config, b *filters.Env) (pipeline.Filter, error) {
	old, _ := b.Predecessor().(*Filter)
	f, err := New(Options{
		Predecessor: old,
		Switch:      c.Switch, Dir: c.Dir, Recipients: c.Recipients, Senders: c.Senders,
		IncludeRejected: c.IncludeRejected, MaxSize: c.MaxSize.Bytes, Log: b.Log, Now: b.Now,
		CheckOnly: b.CheckOnly(),
	})
	if err != nil {
		return nil, filters.KeyError[*config.Error](b, "dir", err)
	}
	return f, nil
}
