// Package filters builds the pipeline a configuration describes: it maps
// each filter name in `filters` to its constructor, in the configured order.
package filters

import (
	"bytes"
	"errors"
	"fmt"

	"mailguard/etc"
	"mailguard/internal/config"
	"mailguard/internal/filter/quota"
	"mailguard/internal/filter/virus"
	"mailguard/internal/maildir"
	"mailguard/internal/pipeline"
	"mailguard/internal/sigfile"
	"mailguard/internal/userdir"
)

// constructor builds one filter from the configuration.
type constructor func(c *config.Config) (pipeline.Filter, pipeline.ErrorPolicy, error)

var registry = map[string]constructor{
	virus.Name: newVirus,
	quota.Name: newQuota,
}

// Build constructs the pipeline. Its error joins every problem found, each
// naming a file and line where it can.
func Build(c *config.Config, env pipeline.Env) (*pipeline.Pipeline, error) {
	var (
		members []pipeline.Member
		errs    []error
	)
	for _, name := range c.Filters {
		build, ok := registry[name]
		if !ok {
			errs = append(errs, &config.Error{File: c.File, Line: c.Line("filters"), Msg: fmt.Sprintf("unknown filter %q", name)})
			continue
		}
		f, policy, err := build(c)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		members = append(members, pipeline.Member{Filter: f, OnError: policy})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return pipeline.New(env, members...), nil
}

// VirusSignatures loads the signature file a configuration names, or the
// bundled examples.
func VirusSignatures(c *config.Config) ([]sigfile.Signature, error) {
	if c.Virus.Signatures == "" {
		return sigfile.Parse(etc.SignaturesName, bytes.NewReader(etc.Signatures))
	}
	sigs, err := sigfile.Load(c.Virus.Signatures)
	var perr *sigfile.Error
	if err != nil && !errors.As(err, &perr) {
		// The file itself could not be read: say which key named it.
		return nil, &config.Error{File: c.File, Line: c.Line("virus.signatures"), Msg: "virus.signatures: " + err.Error()}
	}
	return sigs, err
}

func newVirus(c *config.Config) (pipeline.Filter, pipeline.ErrorPolicy, error) {
	policy, err := pipeline.ParseErrorPolicy(c.Virus.OnError)
	if err != nil {
		return nil, 0, &config.Error{File: c.File, Line: c.Line("virus.on_error"), Msg: err.Error()}
	}
	sigs, err := VirusSignatures(c)
	if err != nil {
		return nil, 0, err
	}
	f, err := virus.New(sigs, virus.Options{Reply: c.Virus.Reply, IncludeName: c.Virus.IncludeName})
	return f, policy, err
}

func newQuota(c *config.Config) (pipeline.Filter, pipeline.ErrorPolicy, error) {
	policy, err := pipeline.ParseErrorPolicy(c.Quota.OnError)
	if err != nil {
		return nil, 0, &config.Error{File: c.File, Line: c.Line("quota.on_error"), Msg: err.Error()}
	}
	users, err := userdir.Load(c.Quota.Users, userdir.Options{CaseSensitiveLocal: c.Quota.CaseSensitiveLocal, Delimiter: c.Quota.RecipientDelimiter})
	var uerr *userdir.Error
	if err != nil && !errors.As(err, &uerr) {
		return nil, 0, &config.Error{File: c.File, Line: c.Line("quota.users"), Msg: "quota.users: " + err.Error()}
	}
	if err != nil {
		return nil, 0, err
	}
	return quota.New(quota.Options{
		Users:        users,
		Usage:        &maildir.UsageReader{},
		DefaultQuota: c.Quota.DefaultQuota,
		Margin:       c.Quota.Margin,
		Reply:        c.Quota.Reply,
		Exempt:       c.Quota.ExemptSenders,
	}), policy, nil
}
