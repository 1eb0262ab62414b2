// Package ratelimit is the rate-limit filter: rules of the form "at most
// N events per window per key" (connections, messages, recipients or
// bytes, per client address, client network, sender or recipient), limits
// on concurrent connections per client, and tarpits that hold an abusive
// session (and only it) before answering. Counts live in memory or, shared
// by several MX hosts, in Redis.
package ratelimit

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"mailguard/internal/clientrule"
	"mailguard/internal/pipeline"
	"mailguard/internal/ratecount"
	"mailguard/internal/shared"
	"mailguard/internal/stats"
	"mailguard/internal/verdict"
)

// Name is the filter's configuration name.
const Name = "ratelimit"

// Event is what a rule counts.
type Event string

const (
	Connection  Event = "connection"
	Message     Event = "message"
	Recipient   Event = "recipient"
	Byte        Event = "byte"
	Concurrency Event = "concurrency" // connections open at once
)

// Key is what a rule counts per.
type Key string

const (
	KeyClient    Key = "client"
	KeyNetwork   Key = "network" // the client's /24 (IPv4) or /64 (IPv6)
	KeySender    Key = "sender"
	KeyRecipient Key = "recipient"
)

// Refusal is what happens past a limit, after any delay.
type Refusal uint8

const (
	RefuseNone     Refusal = iota // a tarpit alone: delay, then go on
	RefuseTempFail                // 451 4.7.1
	RefuseReject                  // 550 5.7.1
)

// Rule is one limit.
type Rule struct {
	Name    string
	Event   Event
	Key     Key
	Limit   int64
	Window  time.Duration
	Delay   time.Duration // tarpit; 0 none
	Refusal Refusal
}

// Options configure the filter.
type Options struct {
	Rules []Rule
	// Counter is where counts live. SharedCounter, when set, is used
	// instead: a counter held with the predecessor a reload replaced.
	Counter       ratecount.Counter
	SharedCounter *shared.Ref[ratecount.Counter]
	Backend       string // for the start-up line
	Exempt        clientrule.List
	// ExemptAuth exempts logged-in clients from message, recipient and
	// byte rules (connection rules apply before a client can log in).
	ExemptAuth bool
	// MaxTarpitted bounds the sessions held at once; past it, a rule's
	// refusal comes without its delay. SharedTarpit, when set, holds the
	// slots shared with a predecessor.
	MaxTarpitted int
	SharedTarpit *shared.Ref[chan struct{}]
	Log          *slog.Logger
	Stats        *stats.Counter
}

// Filter is immutable but for its tarpit slots and counts; a reload
// builds a new one, which takes over both (see build).
type Filter struct {
	opts    Options
	counter *shared.Ref[ratecount.Counter]
	tarpit  *shared.Ref[chan struct{}]
	slots   chan struct{} // tarpit's value
	byStage map[Event][]int
	// The rules taken together at MAIL (message and byte rules), and at
	// RCPT: those counting per recipient, and the others.
	mailRules, rcptSender, rcptRecipient []int
}

// New builds the filter.
func New(opts Options) *Filter {
	if opts.MaxTarpitted <= 0 {
		opts.MaxTarpitted = 100
	}
	f := &Filter{opts: opts, counter: opts.SharedCounter, tarpit: opts.SharedTarpit, byStage: map[Event][]int{}}
	if f.counter == nil {
		f.counter = shared.New(opts.Counter, "", closeCounter)
	}
	f.opts.Counter = f.counter.Value()
	if f.tarpit == nil {
		f.tarpit = shared.New(make(chan struct{}, opts.MaxTarpitted), tarpitKey(opts.MaxTarpitted), nil)
	}
	f.slots = f.tarpit.Value()
	for i, r := range opts.Rules {
		f.byStage[r.Event] = append(f.byStage[r.Event], i)
		switch {
		case r.Event == Message || r.Event == Byte:
			f.mailRules = append(f.mailRules, i)
		case r.Event == Recipient && r.Key == KeyRecipient:
			f.rcptRecipient = append(f.rcptRecipient, i)
		case r.Event == Recipient:
			f.rcptSender = append(f.rcptSender, i)
		}
	}
	return f
}

func (f *Filter) Name() string { return Name }

// Close lets go of the counter and the tarpit slots; the last filter
// holding a Redis client closes it.
func (f *Filter) Close() error {
	f.tarpit.Release()
	return f.counter.Release()
}

func closeCounter(c ratecount.Counter) error {
	if cl, ok := c.(interface{ Close() error }); ok {
		return cl.Close()
	}
	return nil
}

func tarpitKey(n int) string { return strconv.Itoa(n) }

// Summary is what the start-up and reload log lines say of the filter.
func (f *Filter) Summary() string {
	return fmt.Sprintf("%d rules, counted in %s", len(f.opts.Rules), f.opts.Backend)
}

// Stages: each event's stage; bytes are checked at MAIL and counted at
// the end of the message.
func (f *Filter) Stages() (reads, decides pipeline.Stage) {
	reads = pipeline.StageConnect | pipeline.StageMail | pipeline.StageRcpt
	if len(f.byStage[Byte]) > 0 {
		reads |= pipeline.StageBody | pipeline.StageEndOfMessage
	}
	return reads, pipeline.StageConnect | pipeline.StageMail | pipeline.StageRcpt
}

// Macros: whether the client logged in.
func (f *Filter) Macros() map[pipeline.Stage][]string {
	return map[pipeline.Stage][]string{pipeline.StageMail: {"{auth_authen}"}}
}

// counterKey is a rule's key for one event.
func (r Rule) counterKey(client netip.Addr, value string) (string, bool) {
	var k string
	switch r.Key {
	case KeyClient:
		if !client.IsValid() {
			return "", false
		}
		k = client.String()
	case KeyNetwork:
		if !client.IsValid() {
			return "", false
		}
		k = clientrule.Network(client).String()
	default:
		k = strings.ToLower(value)
		if k == "" {
			k = "<>"
		}
	}
	return r.Name + ":" + k, true
}

func (f *Filter) count(rule, what string) {
	if f.opts.Stats != nil {
		f.opts.Stats.Hit(Name, rule+" "+what)
	}
}

// over applies a rule's action to an event past its limit: the tarpit's
// delay (while a slot is free and the call lasts), then its refusal.
func (f *Filter) over(ctx context.Context, r Rule, key string, count int64) (verdict.Verdict, error) {
	if r.Delay > 0 {
		select {
		case f.slots <- struct{}{}:
			f.count(r.Name, "delayed")
			t := time.NewTimer(r.Delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				<-f.slots
				return verdict.Pass, ctx.Err()
			}
			<-f.slots
		default:
			// Every slot is taken: a flood cannot hold the daemon.
			f.count(r.Name, "tarpit full")
			if r.Refusal == RefuseNone {
				return f.refuse(r, key, count, RefuseTempFail), nil
			}
		}
	}
	if r.Refusal == RefuseNone {
		return verdict.Pass, nil
	}
	return f.refuse(r, key, count, r.Refusal), nil
}

func (f *Filter) refuse(r Rule, key string, count int64, how Refusal) verdict.Verdict {
	var v verdict.Verdict
	if how == RefuseReject {
		v = verdict.Rejectf(verdict.CodeMailboxUnavailable, verdict.EnhDeliveryNotAuthorized, "Rate limit exceeded")
	} else {
		v = verdict.TempFailf(verdict.CodeLocalError, verdict.EnhSecurityTemp, "Rate limit exceeded, try again later")
	}
	if r.Event == Concurrency { // no window: sessions open now
		v.Reason = fmt.Sprintf("%s over %d sessions at once (%d counted)", key, r.Limit, count)
	} else {
		v.Reason = fmt.Sprintf("%s over %d %ss per %s (%d counted)", key, r.Limit, r.Event, r.Window, count)
	}
	v.Key = r.Name
	return v
}

// take counts one event (n of them) for each of the rules, all at once:
// the event is counted for every rule or, if it is over one's limit, for
// none, and that rule's action applies. value is the sender or recipient
// a rule may count per. Byte rules only look: their bytes are counted at
// the end of the message.
func (f *Filter) take(ctx context.Context, rules []int, client netip.Addr, value string, n int64) (verdict.Verdict, error) {
	return f.takeAs(ctx, rules, client, value, n, "")
}

// takeAs is take with holder naming who holds the holder counts.
func (f *Filter) takeAs(ctx context.Context, rules []int, client netip.Addr, value string, n int64, holder string) (verdict.Verdict, error) {
	ops := make([]ratecount.Op, 0, len(rules))
	idx := make([]int, 0, len(rules))
	for _, i := range rules {
		r := f.opts.Rules[i]
		key, ok := r.counterKey(client, value)
		if !ok {
			continue
		}
		op := ratecount.Op{Key: key, N: n, Limit: r.Limit, Window: r.Window, Holder: holder}
		if r.Event == Byte {
			op.N = 0
		}
		ops = append(ops, op)
		idx = append(idx, i)
	}
	if len(ops) == 0 {
		return verdict.Pass, nil
	}
	over, count, err := f.opts.Counter.Take(ctx, ops)
	if err != nil || over < 0 {
		return verdict.Pass, err
	}
	return f.over(ctx, f.opts.Rules[idx[over]], ops[over].Key, count)
}

func (f *Filter) NewConnState(context.Context, *pipeline.Conn) (pipeline.ConnState, error) {
	s := &connState{f: f}
	if len(f.byStage[Concurrency]) > 0 {
		// The holder name: unique across sessions and hosts, so a count
		// is given back by the session that took it and by no other.
		s.holder = rand.Text()
	}
	return s, nil
}

type connState struct {
	pipeline.NopConnState // Helo
	f                     *Filter
	client                netip.Addr
	exempt                bool
	holder                string
	held                  []string // concurrency keys acquired, or perhaps acquired
}

func clientAddr(c *pipeline.Conn) netip.Addr {
	a, err := netip.ParseAddr(strings.Trim(c.Addr, "[]"))
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

func (s *connState) Connect(ctx context.Context, c *pipeline.Conn) (verdict.Verdict, error) {
	s.client = clientAddr(c)
	if _, ok := s.f.opts.Exempt.First(clientrule.NewClient(c.Addr, c.Hostname, "")); ok {
		s.exempt = true
		return verdict.Pass, nil
	}
	rules := append(append([]int(nil), s.f.byStage[Concurrency]...), s.f.byStage[Connection]...)
	v, err := s.f.takeAs(ctx, rules, s.client, "", 1, s.holder)
	if err != nil || !v.Final() {
		// Counted, or perhaps counted (a take that failed may yet run in
		// Redis): the connection gives its concurrency counts back at Close.
		for _, i := range s.f.byStage[Concurrency] {
			if key, ok := s.f.opts.Rules[i].counterKey(s.client, ""); ok {
				s.held = append(s.held, key)
			}
		}
	}
	return v, err
}

// Close gives back the connection's concurrency counts, on a context of
// its own: the connection's has ended.
func (s *connState) Close() {
	if len(s.held) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, key := range s.held {
		if err := s.f.opts.Counter.Release(ctx, key, s.holder); err != nil {
			s.f.opts.Log.Warn("ratelimit: a concurrency count not given back; it ends when its lease does", "key", key, "lease", ratecount.HolderLease.String(), "error", err.Error())
		}
	}
	s.held = nil
}

func (f *Filter) NewCheck(context.Context, *pipeline.Envelope) (pipeline.Check, error) {
	return &check{f: f}, nil
}

type check struct {
	pipeline.NopCheck
	f      *Filter
	exempt bool
	client netip.Addr
	size   int64 // bytes announced or counted
}

func (c *check) MailFrom(ctx context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	s, _ := env.ConnState(c.f).(*connState)
	if s != nil {
		c.exempt, c.client = s.exempt, s.client
	}
	if c.f.opts.ExemptAuth && env.Macro("{auth_authen}") != "" {
		c.exempt = true
	}
	if c.exempt {
		return verdict.Pass, nil
	}
	// Bytes: refused now if the count is already over; the message's
	// size is counted at its end.
	return c.f.take(ctx, c.f.mailRules, c.client, env.From, 1)
}

func (c *check) Rcpt(ctx context.Context, env *pipeline.Envelope, rcpt, _ string) (verdict.Verdict, error) {
	if c.exempt {
		return verdict.Pass, nil
	}
	if v, err := c.f.take(ctx, c.f.rcptSender, c.client, env.From, 1); err != nil || v.Final() {
		return v, err
	}
	return c.f.take(ctx, c.f.rcptRecipient, c.client, rcpt, 1)
}

func (c *check) Body(_ context.Context, chunk []byte) (verdict.Verdict, error) {
	c.size += int64(len(chunk))
	return verdict.Pass, nil
}

func (c *check) EndOfMessage(ctx context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	if c.exempt || len(c.f.byStage[Byte]) == 0 {
		return verdict.Pass, nil
	}
	for _, i := range c.f.byStage[Byte] {
		r := c.f.opts.Rules[i]
		if key, ok := r.counterKey(c.client, env.From); ok {
			if err := c.f.opts.Counter.Add(ctx, key, c.size, r.Window); err != nil {
				return verdict.Pass, err
			}
		}
	}
	return verdict.Pass, nil
}

// defaultName names a rule that has no name: "connection/client/30/1m".
func defaultName(r Rule) string {
	return string(r.Event) + "/" + string(r.Key) + "/" + strconv.FormatInt(r.Limit, 10) + "/" + r.Window.String()
}
