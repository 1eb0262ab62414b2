package quota

import (
	_ "embed"
	"slices"
	"time"

	"mailguard/internal/addrpattern"
	"mailguard/internal/config"
	"mailguard/internal/filters"
	"mailguard/internal/linefile"
	"mailguard/internal/maildir"
	"mailguard/internal/pipeline"
	"mailguard/internal/userdir"
)

func init() { filters.Register(Name, defaults, build, example) }

// Config is the [quota] section.
type Config struct {
	config.Common
	Users              string      `toml:"users"` // the user directory file
	DefaultQuota       config.Size `toml:"default_quota"`
	Margin             config.Size `toml:"margin"`
	Reply              string      `toml:"reply"`
	ExemptSenders      []string    `toml:"exempt_senders"`
	LocalPartCase      string      `toml:"local_part_case"`
	RecipientDelimiter string      `toml:"recipient_delimiter"`
	// RecountInterval is how long a count of a Maildir's messages (made
	// when it has no usable maildirsize) stays good.
	RecountInterval config.Duration `toml:"recount_interval"`
}

//go:embed example.toml
var example string

func defaults() *Config {
	return &Config{Common: config.NewCommon("accept"), Margin: config.Size{Bytes: 25 << 10}, Reply: "Mailbox full",
		ExemptSenders: slices.Clone(DefaultExempt), LocalPartCase: "insensitive", RecipientDelimiter: "+",
		RecountInterval: config.Duration{Duration: time.Minute}}
}

// Validate checks the section.
func (c *Config) Validate(v *config.Checker, enabled bool) {
	v.Path("users", &c.Users)
	v.Reply("reply", c.Reply)
	v.OneOf("local_part_case", c.LocalPartCase, "insensitive", "sensitive")
	v.Delimiter("recipient_delimiter", c.RecipientDelimiter)
	for _, p := range c.ExemptSenders {
		if err := addrpattern.Check(p); err != nil {
			v.Fail("exempt_senders", "%v", err)
		}
	}
	if enabled {
		v.Require("users", c.Users, `"FILE" (the user directory)`)
	}
}

func build(c *Config, b *filters.Env) (pipeline.Filter, error) {
	users, err := userdir.Load(c.Users, userdir.Options{CaseSensitiveLocal: c.LocalPartCase == "sensitive", Delimiter: c.RecipientDelimiter, MaxFileSize: b.MaxFileSize()})
	if err != nil {
		return nil, filters.KeyError[*linefile.Error](b, "users", err)
	}
	return New(Options{
		Users:        users,
		Usage:        &maildir.UsageReader{Recount: c.RecountInterval.Duration},
		Log:          b.Log,
		Stats:        b.Stats,
		DefaultQuota: c.DefaultQuota.Bytes,
		Margin:       c.Margin.Bytes,
		Reply:        c.Reply,
		Exempt:       c.ExemptSenders,
	}), nil
}
