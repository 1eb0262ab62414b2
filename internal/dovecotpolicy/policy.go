// Package dovecotpolicy is the Dovecot auth policy door: an HTTP server
// speaking Dovecot 2.3's auth policy protocol (auth_policy_server_url).
// Dovecot asks it before each login (command=allow) whether to let the
// attempt go on, hold it some seconds, or refuse it, and tells it the
// outcome afterwards (command=report). The answers come from rate rules
// counted with internal/ratecount, in memory or in a Redis that several
// hosts share, the way the ratelimit filter counts mail.
package dovecotpolicy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"mailguard/internal/clientrule"
	"mailguard/internal/pipeline"
	"mailguard/internal/ratecount"
)

// Event is what a rule counts.
type Event string

const (
	Login   Event = "login"   // every reported attempt
	Failure Event = "failure" // reported attempts that failed
)

// Key is what a rule counts per.
type Key string

const (
	KeyClient  Key = "client"
	KeyNetwork Key = "network" // the client's /24 (IPv4) or /64 (IPv6)
	KeyUser    Key = "user"    // the login name, case folded
)

// Rule is one limit: past Limit events in Window per key, Delay (if set);
// past RejectLimit (if Reject), refuse.
type Rule struct {
	Name        string
	Event       Event
	Key         Key
	Limit       int64
	RejectLimit int64
	Window      time.Duration
	Delay       time.Duration
	Reject      bool
}

// Request is what Dovecot sends: the attributes of the default
// auth_policy_request_attributes (login, pwhash, remote, protocol...),
// and, in a report, the outcome.
type Request struct {
	Login        string `json:"login"`
	PasswordHash string `json:"pwhash"`
	Remote       string `json:"remote"`
	Protocol     string `json:"protocol"`
	SessionID    string `json:"session_id"`
	Success      bool   `json:"success"`
	PolicyReject bool   `json:"policy_reject"`
}

// Action is a decision.
type Action uint8

const (
	Allow Action = iota
	Delay
	Refuse
)

func (a Action) String() string {
	return [...]string{"allow", "delay", "reject"}[a]
}

// Decision is the answer to one command=allow.
type Decision struct {
	Action Action
	Delay  time.Duration
	Rule   string // the rule that decided; "" for none
	Count  int64  // the count that passed its limit
	Limit  int64
	// Reason says why an attempt is let through unexamined: "exempt
	// network", "known password".
	Reason string
}

// Options configure a Policy.
type Options struct {
	Rules   []Rule
	Counter ratecount.Counter
	Backend string // for log lines
	Exempt  []netip.Prefix
	// RememberSuccess: how long a successful login's (user, password
	// hash) exempts the same pair; 0 turns the exemption off.
	RememberSuccess time.Duration
	Monitor         bool   // log and count, but answer allow
	RejectOnError   bool   // a failing backend refuses rather than allows
	Message         string // told to Dovecot with a refusal
	Timeout         time.Duration
	Log             *slog.Logger
	Stats           Hits
}

// Hits counts events under the summary's keys: a *stats.Counter, or the
// daemon's pipeline.Env, which also feeds the metrics.
type Hits interface {
	Hit(filter, reason string)
}

// Policy decides and counts. It is immutable; a reload builds a new one.
type Policy struct {
	opts Options
	// threshold ops in the order they are checked: refusals first, then
	// delays, longest first, so the first limit passed is the harshest.
	thresholds []threshold
}

type threshold struct {
	rule   int
	action Action
	limit  int64
}

// reportLimit lets every report's counts through: a count, not a check.
const reportLimit = 1 << 50

// New builds a Policy.
func New(opts Options) *Policy {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Second
	}
	p := &Policy{opts: opts}
	for i, r := range opts.Rules {
		if r.Reject {
			p.thresholds = append(p.thresholds, threshold{rule: i, action: Refuse, limit: r.RejectLimit})
		}
		if r.Delay > 0 {
			p.thresholds = append(p.thresholds, threshold{rule: i, action: Delay, limit: r.Limit})
		}
	}
	slices.SortStableFunc(p.thresholds, func(a, b threshold) int {
		if a.action != b.action {
			return int(b.action) - int(a.action)
		}
		return int(opts.Rules[b.rule].Delay - opts.Rules[a.rule].Delay)
	})
	return p
}

// key is a rule's counter key for a request, false when the request
// lacks what the rule counts per (no address, no login).
func (p *Policy) key(r Rule, client netip.Addr, login string) (string, bool) {
	var value string
	switch r.Key {
	case KeyClient:
		if !client.IsValid() {
			return "", false
		}
		value = client.String()
	case KeyNetwork:
		if !client.IsValid() {
			return "", false
		}
		value = clientrule.Network(client).String()
	case KeyUser:
		if login == "" {
			return "", false
		}
		value = login
	}
	return "dovecot:" + r.Name + ":" + value, true
}

// maxKeyPart bounds what a client-chosen login adds to a counter key;
// a longer one is counted under its hash.
const maxKeyPart = 256

func normalizeLogin(s string) string {
	s = strings.ToLower(s)
	if len(s) > maxKeyPart {
		sum := sha256.Sum256([]byte(s))
		return "#" + hex.EncodeToString(sum[:])
	}
	return s
}

func parseRemote(s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

func (p *Policy) exempt(client netip.Addr) bool {
	if !client.IsValid() {
		return false
	}
	for _, pfx := range p.opts.Exempt {
		if pfx.Contains(client) {
			return true
		}
	}
	return false
}

// successKey names a (user, password hash) pair that logged in. An
// empty hash (auth_policy_request_attributes without pwhash) names none.
func successKey(login, hash string) (string, bool) {
	if login == "" || hash == "" || len(hash) > 128 {
		return "", false
	}
	return "dovecot:ok:" + login + ":" + hash, true
}

// Allow answers command=allow. An error is the backend's; the decision
// then follows on_error.
//
// A user and password hash that logged in within RememberSuccess skip
// the rules counted per user: a botnet guessing at an account elsewhere
// does not lock its owner out. Rules per client and network still apply,
// since those count what this client itself did.
func (p *Policy) Allow(ctx context.Context, req *Request) (Decision, error) {
	client, login := parseRemote(req.Remote), normalizeLogin(req.Login)
	if p.exempt(client) {
		return Decision{Reason: "exempt network"}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	var known []ratecount.Op
	if k, ok := successKey(login, req.PasswordHash); ok && p.opts.RememberSuccess > 0 {
		// Looked at first: over its limit of 0 means "seen".
		known = []ratecount.Op{{Key: k, Limit: 0, Window: p.opts.RememberSuccess}}
	}
	d, over, err := p.check(ctx, known, client, login, false)
	if err != nil || over != 0 || known == nil {
		return d, err
	}
	d, _, err = p.check(ctx, nil, client, login, true)
	if err == nil && d.Action == Allow {
		d.Reason = "known password"
	}
	return d, err
}

// check looks at every threshold that applies, after the ops in first,
// in one round trip. over is the index of the first op past its limit
// among first (-1: none of them).
func (p *Policy) check(ctx context.Context, first []ratecount.Op, client netip.Addr, login string, skipUser bool) (Decision, int, error) {
	ops := append(make([]ratecount.Op, 0, len(first)+len(p.thresholds)), first...)
	checked := make([]threshold, 0, len(p.thresholds))
	for _, t := range p.thresholds {
		r := p.opts.Rules[t.rule]
		if skipUser && r.Key == KeyUser {
			continue
		}
		k, ok := p.key(r, client, login)
		if !ok {
			continue
		}
		// Over when count+0 > limit-1: the limit's worth of events
		// passes, the next attempt meets the action.
		ops = append(ops, ratecount.Op{Key: k, Limit: t.limit - 1, Window: r.Window})
		checked = append(checked, t)
	}
	if len(ops) == 0 {
		return Decision{}, -1, nil
	}
	over, count, err := p.opts.Counter.Take(ctx, ops)
	switch {
	case err != nil:
		return Decision{}, -1, err
	case over < 0:
		return Decision{}, -1, nil
	case over < len(first):
		return Decision{}, over, nil
	}
	t := checked[over-len(first)]
	r := p.opts.Rules[t.rule]
	d := Decision{Action: t.action, Rule: r.Name, Count: count, Limit: t.limit}
	if t.action == Delay {
		d.Delay = r.Delay
	}
	return d, -1, nil
}

// Report counts command=report: every attempt for login rules, failed
// ones for failure rules, and a success remembers its password hash.
func (p *Policy) Report(ctx context.Context, req *Request) error {
	client, login := parseRemote(req.Remote), normalizeLogin(req.Login)
	if p.exempt(client) {
		return nil
	}
	ops := make([]ratecount.Op, 0, len(p.opts.Rules)+1)
	for _, r := range p.opts.Rules {
		if r.Event == Failure && req.Success {
			continue
		}
		if k, ok := p.key(r, client, login); ok {
			ops = append(ops, ratecount.Op{Key: k, N: 1, Limit: reportLimit, Window: r.Window})
		}
	}
	if k, ok := successKey(login, req.PasswordHash); ok && req.Success && p.opts.RememberSuccess > 0 {
		ops = append(ops, ratecount.Op{Key: k, N: 1, Limit: reportLimit, Window: p.opts.RememberSuccess})
	}
	if len(ops) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	_, _, err := p.opts.Counter.Take(ctx, ops)
	return err
}

// logDecision writes the line a postmaster greps for, and counts it.
func (p *Policy) logDecision(req *Request, d Decision, monitor bool) {
	verdict := d.Action.String()
	if d.Action == Delay {
		verdict += " " + d.Delay.String()
	}
	if monitor {
		verdict = "would " + verdict
	}
	if p.opts.Stats != nil {
		word := map[Action]string{Delay: "delayed", Refuse: "rejected"}[d.Action]
		if monitor {
			word = "would " + d.Action.String()
		}
		p.opts.Stats.Hit(Name, d.Rule+" "+word)
	}
	p.opts.Log.Info("decision", "filter", Name, "verdict", verdict, "rule", d.Rule, "count", d.Count, "limit", d.Limit,
		"client", pipeline.LogField(req.Remote), "login", pipeline.LogField(req.Login), "protocol", pipeline.LogField(req.Protocol),
		"session", pipeline.LogField(req.SessionID))
}
