package attachments

import (
	_ "embed"
	"errors"
	"fmt"
	"path"
	"strings"

	"mailguard/internal/config"
	"mailguard/internal/filters"
	"mailguard/internal/hashlist"
	"mailguard/internal/linefile"
	"mailguard/internal/mimewalk"
	"mailguard/internal/pipeline"
)

func init() { filters.Register(Name, defaults, build, example) }

// Config is the [attachments] section.
type Config struct {
	config.Common
	Hashes                    []string    `toml:"hashes"`
	BlockNames                []string    `toml:"block_names"`
	BlockDoubleExtensions     bool        `toml:"block_double_extensions"`
	BlockDisguisedExecutables bool        `toml:"block_disguised_executables"`
	LookInArchives            bool        `toml:"look_in_archives"`
	MaxDepth                  int         `toml:"max_depth"`
	MaxParts                  int         `toml:"max_parts"`
	MaxDecoded                config.Size `toml:"max_decoded"`
	OnLimit                   string      `toml:"on_limit"`
	OnMalformed               string      `toml:"on_malformed"`
	Reply                     string      `toml:"reply"`
}

//go:embed example.toml
var example string

func defaults() *Config {
	return &Config{
		Common: config.NewCommon("tempfail"), Hashes: []string{}, BlockNames: []string{},
		LookInArchives: true, MaxDepth: 20, MaxParts: 1000, MaxDecoded: config.Size{Bytes: 100 << 20},
		OnLimit: "reject", OnMalformed: "accept", Reply: "Attachment refused: %v",
	}
}

// Validate checks the section.
func (c *Config) Validate(v *config.Checker, enabled bool) {
	for i := range c.Hashes {
		v.Path("hashes", &c.Hashes[i])
	}
	for _, p := range c.BlockNames {
		if _, err := path.Match(strings.ToLower(p), ""); err != nil || p == "" || strings.Contains(p, "/") {
			v.Fail("block_names", "%q is not a file name pattern such as \"*.exe\"", p)
		}
	}
	if c.MaxDepth < 1 || c.MaxDepth > 100 {
		v.Fail("max_depth", "want 1 to 100")
	}
	if c.MaxParts < 1 || c.MaxParts > 100000 {
		v.Fail("max_parts", "want 1 to 100000")
	}
	if c.MaxDecoded.Bytes < 1 {
		v.Fail("max_decoded", "want a size such as 100M")
	}
	v.OneOf("on_limit", c.OnLimit, "accept", "tempfail", "reject")
	v.OneOf("on_malformed", c.OnMalformed, "accept", "tempfail", "reject")
	v.Reply("reply", strings.ReplaceAll(c.Reply, "%v", "NAME"))
	if strings.Contains(strings.ReplaceAll(c.Reply, "%v", ""), "%") {
		v.Fail("reply", "the only placeholder is %%v (the attachment's name)")
	}
	if enabled && len(c.Hashes) == 0 && len(c.BlockNames) == 0 && !c.BlockDoubleExtensions && !c.BlockDisguisedExecutables {
		v.Require("hashes", "", `["FILE.hsb"], or block_names = ["*.exe"], or block_double_extensions or block_disguised_executables = true`)
	}
}

var policies = map[string]Policy{"accept": PolicyAccept, "tempfail": PolicyTempFail, "reject": PolicyReject}

func build(c *Config, b *filters.Env) (pipeline.Filter, error) {
	list := &hashlist.List{}
	var errs []error
	for _, file := range c.Hashes {
		before := list.Len()
		if err := list.Load(file, b.MaxFileSize()); err != nil {
			errs = append(errs, filters.KeyError[*linefile.Error](b, "hashes", err))
			continue
		}
		if list.Len() == before {
			b.Warn("hashes", "%s holds no hashes", file)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(c.Hashes) > 0 && list.Len() == 0 && len(c.BlockNames) == 0 && !c.BlockDoubleExtensions && !c.BlockDisguisedExecutables {
		return nil, filters.KeyError[*linefile.Error](b, "hashes", fmt.Errorf("no hashes in %s, and no other rule: the filter would pass every message", strings.Join(c.Hashes, ", ")))
	}
	names := make([]string, len(c.BlockNames))
	for i, p := range c.BlockNames {
		names[i] = strings.ToLower(p)
	}
	return New(Options{
		Hashes: list, HashFiles: len(c.Hashes), BlockNames: names,
		DoubleExt: c.BlockDoubleExtensions, Disguised: c.BlockDisguisedExecutables, Archives: c.LookInArchives,
		Limits:  mimewalk.Options{MaxDepth: c.MaxDepth, MaxParts: c.MaxParts, MaxDecoded: c.MaxDecoded.Bytes},
		OnLimit: policies[c.OnLimit], OnMalformed: policies[c.OnMalformed], Reply: c.Reply, Log: b.Log, Stats: b.Stats,
	}), nil
}
