// Package filters builds the pipeline a configuration describes: it maps
// each filter name in `filters` to its constructor, in the configured order.
package filters

import (
	"bytes"
	"errors"
	"fmt"

	"mailguard/etc"
	"mailguard/internal/config"
	"mailguard/internal/filter/capture"
	"mailguard/internal/filter/quota"
	"mailguard/internal/filter/senders"
	"mailguard/internal/filter/virus"
	"mailguard/internal/linefile"
	"mailguard/internal/maildir"
	"mailguard/internal/pipeline"
	"mailguard/internal/sigfile"
	"mailguard/internal/userdir"
)

// constructor builds one filter from the configuration.
type constructor func(c *config.Config, env pipeline.Env) (pipeline.Filter, pipeline.ErrorPolicy, error)

var registry = map[string]constructor{
	virus.Name:   newVirus,
	quota.Name:   newQuota,
	capture.Name: newCapture,
	senders.Name: newSenders,
}

// policy reads a filter's on_error setting, placing an error at its key.
func policy(c *config.Config, key, value string) (pipeline.ErrorPolicy, error) {
	p, err := pipeline.ParseErrorPolicy(value)
	if err != nil {
		return 0, &config.Error{File: c.File, Line: c.Line(key), Msg: err.Error()}
	}
	return p, nil
}

// fileError places an error reading a file at the key that names it, unless
// the file's own parser already said where.
func fileError[E error](c *config.Config, key string, err error) error {
	var own E
	if err == nil || errors.As(err, &own) {
		return err
	}
	return &config.Error{File: c.File, Line: c.Line(key), Msg: key + ": " + err.Error()}
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
		f, policy, err := build(c, env)
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
	return sigs, fileError[*sigfile.Error](c, "virus.signatures", err)
}

func newVirus(c *config.Config, env pipeline.Env) (pipeline.Filter, pipeline.ErrorPolicy, error) {
	p, err := policy(c, "virus.on_error", c.Virus.OnError)
	if err != nil {
		return nil, 0, err
	}
	sigs, err := VirusSignatures(c)
	if err != nil {
		return nil, 0, err
	}
	f, err := virus.New(sigs, virus.Options{Reply: c.Virus.Reply, IncludeName: c.Virus.IncludeName})
	return f, p, err
}

func newQuota(c *config.Config, env pipeline.Env) (pipeline.Filter, pipeline.ErrorPolicy, error) {
	p, err := policy(c, "quota.on_error", c.Quota.OnError)
	if err != nil {
		return nil, 0, err
	}
	users, err := userdir.Load(c.Quota.Users, userdir.Options{CaseSensitiveLocal: c.Quota.CaseSensitiveLocal, Delimiter: c.Quota.RecipientDelimiter})
	if err != nil {
		return nil, 0, fileError[*linefile.Error](c, "quota.users", err)
	}
	return quota.New(quota.Options{
		Users:        users,
		Usage:        &maildir.UsageReader{},
		DefaultQuota: c.Quota.DefaultQuota,
		Margin:       c.Quota.Margin,
		Reply:        c.Quota.Reply,
		Exempt:       c.Quota.ExemptSenders,
	}), p, nil
}

func newCapture(c *config.Config, env pipeline.Env) (pipeline.Filter, pipeline.ErrorPolicy, error) {
	p, err := policy(c, "capture.on_error", c.Capture.OnError)
	if err != nil {
		return nil, 0, err
	}
	f, err := capture.New(capture.Options{
		Switch: c.Capture.Switch, Dir: c.Capture.Dir, Recipients: c.Capture.Recipients, Senders: c.Capture.Senders,
		IncludeRejected: c.Capture.IncludeRejected, MaxSize: c.Capture.MaxSize, Log: env.Log, Now: env.Now,
	})
	if err != nil {
		return nil, 0, &config.Error{File: c.File, Line: c.Line("capture.dir"), Msg: "capture.dir: " + err.Error()}
	}
	return f, p, nil
}

func newSenders(c *config.Config, env pipeline.Env) (pipeline.Filter, pipeline.ErrorPolicy, error) {
	p, err := policy(c, "senders.on_error", c.Senders.OnError)
	if err != nil {
		return nil, 0, err
	}
	list, err := senders.Load(c.Senders.Blocklist, c.Senders.RecipientDelimiter)
	if err != nil {
		return nil, 0, fileError[*linefile.Error](c, "senders.blocklist", err)
	}
	return senders.New(senders.Options{List: list, Reply: c.Senders.Reply}), p, nil
}
