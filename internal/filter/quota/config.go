package quota

import (
	_ "embed"
	"slices"
	"strings"
	"time"

	"mailguard/internal/addrpattern"
	"mailguard/internal/config"
	"mailguard/internal/dovecotauth"
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
	Users string `toml:"users"` // the user directory file
	// Userdb is Dovecot's auth-userdb socket, used instead of Users.
	Userdb                string          `toml:"userdb"`
	UserdbCache           config.Duration `toml:"userdb_cache"`
	UserdbTimeout         config.Duration `toml:"userdb_timeout"`
	UserdbUsername        string          `toml:"userdb_username"`
	UserdbMaildir         string          `toml:"userdb_maildir"`
	UserdbForwardFields   []string        `toml:"userdb_forward_fields"`
	UserdbAutoreplyFields []string        `toml:"userdb_autoreply_fields"`
	DefaultQuota          config.Size     `toml:"default_quota"`
	Margin                config.Size     `toml:"margin"`
	Reply                 string          `toml:"reply"`
	ExemptSenders         []string        `toml:"exempt_senders"`
	LocalPartCase         string          `toml:"local_part_case"`
	RecipientDelimiter    string          `toml:"recipient_delimiter"`
	// RecountInterval is how long a count of a Maildir's messages (made
	// when it has no usable maildirsize) stays good.
	RecountInterval config.Duration `toml:"recount_interval"`
}

//go:embed example.toml
var example string

func defaults() *Config {
	return &Config{Common: config.NewCommon("accept"), Margin: config.Size{Bytes: 25 << 10}, Reply: "Mailbox full",
		ExemptSenders: slices.Clone(DefaultExempt), LocalPartCase: "insensitive", RecipientDelimiter: "+",
		RecountInterval: config.Duration{Duration: time.Minute},
		UserdbCache:     config.Duration{Duration: time.Minute}, UserdbTimeout: config.Duration{Duration: 2 * time.Second},
		UserdbUsername: "address", UserdbMaildir: "~/Maildir",
		UserdbForwardFields: []string{"forward"}, UserdbAutoreplyFields: []string{"vacation", "autoreply"}}
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
	v.Path("userdb", &c.Userdb)
	v.OneOf("userdb_username", c.UserdbUsername, "address", "localpart")
	if m := c.UserdbMaildir; m == "" || (!strings.HasPrefix(m, "~") && !strings.HasPrefix(m, "/") && strings.Contains(m, "..")) {
		v.Fail("userdb_maildir", `want "~/Maildir", a path under home, or an absolute path`)
	}
	if c.UserdbTimeout.Duration > 25*time.Second || c.UserdbTimeout.Duration >= c.Timeout.Duration {
		v.Fail("userdb_timeout", "must be shorter than timeout (%s) and at most 25s", c.Timeout.Duration)
	}
	switch {
	case c.Users != "" && c.Userdb != "":
		v.Fail("userdb", "give users (a file) or userdb (Dovecot's socket), not both")
	case enabled && c.Userdb == "":
		v.Require("users", c.Users, `"FILE" (the user directory), or userdb = "/run/dovecot/auth-userdb"`)
	}
}

func build(c *Config, b *filters.Env) (pipeline.Filter, error) {
	opts := Options{
		Usage:        &maildir.UsageReader{Recount: c.RecountInterval.Duration},
		Log:          b.Log,
		Stats:        b.Stats,
		DefaultQuota: c.DefaultQuota.Bytes,
		Margin:       c.Margin.Bytes,
		Reply:        c.Reply,
		Exempt:       c.ExemptSenders,
	}
	if c.Userdb != "" {
		opts.Userdb = &Userdb{
			Client:        &dovecotauth.Client{Path: c.Userdb, Timeout: c.UserdbTimeout.Duration},
			Cache:         c.UserdbCache.Duration,
			LocalPartOnly: c.UserdbUsername == "localpart",
			Maildir:       c.UserdbMaildir, ForwardFields: c.UserdbForwardFields, AutoreplyFields: c.UserdbAutoreplyFields,
			CaseSensitiveLocal: c.LocalPartCase == "sensitive", Delimiter: c.RecipientDelimiter, Now: b.Now,
		}
		return New(opts), nil
	}
	users, err := userdir.Load(c.Users, userdir.Options{CaseSensitiveLocal: c.LocalPartCase == "sensitive", Delimiter: c.RecipientDelimiter, MaxFileSize: b.MaxFileSize()})
	if err != nil {
		return nil, filters.KeyError[*linefile.Error](b, "users", err)
	}
	opts.Users = users
	return New(opts), nil
}
