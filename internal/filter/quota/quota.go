// Package quota is the mailbox-full filter: at RCPT TO it refuses, with
// "552 5.2.2 Mailbox full", a local recipient whose Maildir++ mailbox has
// less room left than the message needs, so the sender learns at once,
// other recipients of the same message are unaffected, and smaller mail
// keeps arriving up to the limit.
package quota

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"mailguard/internal/addrpattern"
	"mailguard/internal/maildir"
	"mailguard/internal/mailfrom"
	"mailguard/internal/pipeline"
	"mailguard/internal/stats"
	"mailguard/internal/userdir"
	"mailguard/internal/verdict"
)

// Name is the filter's configuration name.
const Name = "quota"

// DefaultExempt are the senders never refused: bounces and mail to or
// from the postmaster must get through (RFC 5321 §4.5.1).
var DefaultExempt = []string{"postmaster@*", "mailer-daemon@*", "<>"}

// Options configure the filter.
type Options struct {
	// Users is the users file, unless Userdb is set: then recipients are
	// looked up in Dovecot's userdb.
	Users  *userdir.Directory
	Userdb *Userdb
	Usage  *maildir.UsageReader
	// DefaultQuota applies to users whose maildirsize has no definition
	// and who have no quota= of their own; 0 is unlimited.
	DefaultQuota int64
	// Margin is the least room a message needs when the client declared no
	// larger SIZE.
	Margin int64
	// Reply is the text after "552 5.2.2"; default "Mailbox full".
	Reply string
	// Exempt lists sender patterns never refused (addrpattern's syntax:
	// "<>", "local@*", "@domain", "*.domain", addresses).
	Exempt []string
	// Log and Stats hear of Maildirs that cannot be read; nil: silent.
	Log   *slog.Logger
	Stats *stats.Counter
}

// unreadableEvery is how often one unreadable Maildir is logged.
const unreadableEvery = 10 * time.Minute

// Filter is immutable but for its record of unreadable Maildirs; a
// reload builds a new one.
type Filter struct {
	opts       Options
	exempt     *addrpattern.Set
	mu         sync.Mutex
	unreadable map[string]time.Time // Maildir -> when last logged
}

// Close closes the connections kept to Dovecot's userdb, if any: a
// reload's new filter opens its own.
func (f *Filter) Close() error {
	if f.opts.Userdb == nil || f.opts.Userdb.Client == nil {
		return nil
	}
	return f.opts.Userdb.Client.Close()
}

// New returns the filter.
func New(opts Options) *Filter {
	if opts.Reply == "" {
		opts.Reply = "Mailbox full"
	}
	if opts.Usage == nil {
		opts.Usage = &maildir.UsageReader{}
	}
	// The patterns were checked with the configuration; one that is not
	// a pattern exempts nobody.
	exempt, _ := addrpattern.NewSet(opts.Exempt)
	f := &Filter{opts: opts, exempt: exempt, unreadable: map[string]time.Time{}}
	if opts.Usage.OnError == nil {
		opts.Usage.OnError = f.cannotRead
	}
	return f
}

func (f *Filter) Name() string { return Name }

// Summary is what the start-up and reload log lines say of the filter.
func (f *Filter) Summary() string {
	if f.opts.Userdb != nil {
		return fmt.Sprintf("users from Dovecot's userdb at %s, kept %s", f.opts.Userdb.Client.Path, f.opts.Userdb.Cache)
	}
	return fmt.Sprintf("%d users", f.opts.Users.Len())
}

// Stages: MAIL gives the sender and SIZE; the verdict is per recipient, at
// RCPT, and must reach the MTA there.
func (f *Filter) Stages() (reads, decides pipeline.Stage) {
	return pipeline.StageMail, pipeline.StageRcpt
}

func (f *Filter) NewCheck(_ context.Context, env *pipeline.Envelope) (pipeline.Check, error) {
	size, _ := mailfrom.DeclaredSize(env.FromArgs)
	return &check{f: f, exempt: f.exempt.Match(env.From), size: size}, nil
}

type check struct {
	pipeline.NopCheck
	f      *Filter
	exempt bool
	size   int64
}

func (c *check) Rcpt(ctx context.Context, _ *pipeline.Envelope, rcpt, _ string) (verdict.Verdict, error) {
	if c.exempt {
		return verdict.Pass, nil
	}
	if c.f.opts.Userdb != nil {
		// A userdb that cannot answer is the filter's failure: on_error.
		u, ok, err := c.f.opts.Userdb.Lookup(ctx, rcpt)
		if err != nil || !ok {
			return verdict.Pass, err
		}
		return c.f.decideUser(u, c.size, true), nil
	}
	return c.f.Decide(rcpt, c.size), nil
}

// Decide applies the rule to one recipient of a message of the declared
// size (0 if none was declared).
func (f *Filter) Decide(rcpt string, size int64) verdict.Verdict {
	u, ok := f.opts.Users.Lookup(rcpt)
	if !ok {
		return verdict.Pass
	}
	return f.decideUser(u, size, false)
}

// decideUser applies the rule to a known account. With ownLimits, the
// account's limits (Dovecot's quota_rule) win over maildirsize's
// definition, which Dovecot rewrites from them at its next delivery.
func (f *Filter) decideUser(u *userdir.User, size int64, ownLimits bool) verdict.Verdict {
	if u.Forward || u.Autoreply {
		return verdict.Pass
	}
	usage, ok := f.opts.Usage.Usage(u.Maildir)
	if !ok {
		return verdict.Pass // unknown in time: never refuse on a guess
	}
	limitBytes, limitCount := u.Quota, u.Count
	switch {
	case ownLimits && (u.Quota > 0 || u.Count > 0): // the account's own
	case usage.Def.Set:
		limitBytes, limitCount = usage.Def.Bytes, usage.Def.Count
	case limitBytes == 0:
		limitBytes = f.opts.DefaultQuota
	}
	need := max(f.opts.Margin, size)
	var reason, key string
	switch {
	case limitBytes > 0 && limitBytes-usage.Bytes < need:
		reason, key = fmt.Sprintf("%d of %d bytes used, %d needed", usage.Bytes, limitBytes, need), "mailbox full"
	case limitCount > 0 && usage.Count >= limitCount:
		reason, key = fmt.Sprintf("%d of %d messages", usage.Count, limitCount), "too many messages"
	default:
		return verdict.Pass
	}
	v := verdict.Rejectf(verdict.CodeExceededStorage, verdict.EnhMailboxFull, "%s", f.opts.Reply)
	v.Reason, v.Key = reason, key
	return v
}

// cannotRead logs a Maildir that cannot be read, once per mailbox per
// unreadableEvery, and counts every failed read: mail for it is never
// refused on a guess, so without this line the quota check would be off
// for that mailbox without a word.
func (f *Filter) cannotRead(dir string, err error) {
	if f.opts.Stats != nil {
		f.opts.Stats.Hit(Name, "maildir unreadable")
	}
	if f.opts.Log == nil {
		return
	}
	f.mu.Lock()
	last, seen := f.unreadable[dir]
	now := time.Now()
	if seen && now.Sub(last) < unreadableEvery {
		f.mu.Unlock()
		return
	}
	f.unreadable[dir] = now
	f.mu.Unlock()
	f.opts.Log.Warn("quota: cannot read a Maildir; its recipients are not checked (mailguard's user must be able to read every Maildir in the user directory)",
		"maildir", dir, "error", err.Error())
}
