package virus

import (
	"bytes"
	_ "embed"
	"fmt"

	"mailguard/etc"
	"mailguard/internal/config"
	"mailguard/internal/filters"
	"mailguard/internal/pipeline"
	"mailguard/internal/sigfile"
)

func init() { filters.Register(Name, defaults, build, example) }

// Config is the [virus] section.
type Config struct {
	config.Common
	// Signatures is the signature file; "" means the bundled examples.
	Signatures  string `toml:"signatures"`
	Reply       string `toml:"reply"`
	IncludeName bool   `toml:"include_name"`
	// AllowEmpty accepts a signature file with no signatures; otherwise
	// that is an error, since the filter would pass every message.
	AllowEmpty bool `toml:"allow_empty"`
}

//go:embed example.toml
var example string

func defaults() *Config {
	return &Config{Common: config.NewCommon("tempfail"), Reply: "VIRUS FOUND"}
}

// Validate checks the section.
func (c *Config) Validate(v *config.Checker, enabled bool) {
	v.Path("signatures", &c.Signatures)
	v.Reply("reply", c.Reply)
}

// LoadSignatures reads the signature file the section names, or the
// bundled examples.
func (c *Config) LoadSignatures(maxSize int64) ([]sigfile.Signature, error) {
	if c.Signatures == "" {
		return sigfile.Parse(etc.SignaturesName, bytes.NewReader(etc.Signatures))
	}
	return sigfile.Load(c.Signatures, maxSize)
}

func build(c *Config, b *filters.Env) (pipeline.Filter, error) {
	sigs, err := c.LoadSignatures(b.MaxFileSize())
	if err != nil {
		return nil, filters.KeyError[*sigfile.Error](b, "signatures", err)
	}
	if len(sigs) == 0 && !c.AllowEmpty {
		return nil, filters.KeyError[*sigfile.Error](b, "signatures", fmt.Errorf(
			"%s holds no signatures: the virus filter would pass every message (set allow_empty = true if that is intended)", c.Signatures))
	}
	return New(sigs, Options{Reply: c.Reply, IncludeName: c.IncludeName, Source: c.Signatures})
}
