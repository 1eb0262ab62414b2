package senders

import (
	_ "embed"

	"mailguard/internal/config"
	"mailguard/internal/filters"
	"mailguard/internal/linefile"
	"mailguard/internal/pipeline"
)

func init() { filters.Register(Name, defaults, build, example) }

// Config is the [senders] section.
type Config struct {
	config.Common
	Blocklist          string `toml:"blocklist"`
	Reply              string `toml:"reply"`
	RecipientDelimiter string `toml:"recipient_delimiter"`
}

//go:embed example.toml
var example string

func defaults() *Config {
	return &Config{Common: config.NewCommon("accept"), Reply: "Sender blocked by recipient", RecipientDelimiter: "+"}
}

// Validate checks the section.
func (c *Config) Validate(v *config.Checker, enabled bool) {
	v.Path("blocklist", &c.Blocklist)
	v.Reply("reply", c.Reply)
	v.Delimiter("recipient_delimiter", c.RecipientDelimiter)
	if enabled {
		v.Require("blocklist", c.Blocklist, `"FILE"`)
	}
}

func build(c *Config, b *filters.Env) (pipeline.Filter, error) {
	list, err := Load(c.Blocklist, c.RecipientDelimiter, b.MaxFileSize())
	if err != nil {
		return nil, filters.KeyError[*linefile.Error](b, "blocklist", err)
	}
	return New(Options{List: list, Reply: c.Reply}), nil
}
