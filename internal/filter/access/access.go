// Package access is the client access filter: allow and deny rules on
// the client's address, verified host name and HELO name, and DNS
// blocklists. It refuses a denied or listed client with "550 5.7.1" (or
// "421 4.7.0" and closes), at connect, or, so that authenticated users
// are never refused by rules meant for strangers, at MAIL FROM once the
// MTA knows whether the client logged in (as Postfix's smtpd_delay_reject).
package access

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"mailguard/internal/clientrule"
	"mailguard/internal/dnsbl"
	"mailguard/internal/pipeline"
	"mailguard/internal/stats"
	"mailguard/internal/verdict"
)

// Name is the filter's configuration name.
const Name = "access"

// Stage names where the filter gives its verdict.
const (
	AtConnect = "connect" // connect for address and name rules, HELO for HELO rules
	AtMail    = "mail"
	AtRcpt    = "rcpt"
)

// Options configure the filter.
type Options struct {
	Allow, Deny clientrule.List
	// Close answers a denied client 421 4.7.0 (the MTA hangs up) rather
	// than 550 5.7.1.
	Close         bool
	Sites         []dnsbl.Site
	Threshold     int
	DNSTimeout    time.Duration
	Resolver      *dnsbl.Resolver // nil when there are no sites
	ExemptAuth    bool
	ExemptDaemons []string
	DecideAt      string
	Stats         *stats.Counter
}

// Filter is immutable; a reload builds a new one.
type Filter struct{ opts Options }

// New builds the filter.
func New(opts Options) *Filter { return &Filter{opts: opts} }

func (f *Filter) Name() string { return Name }

// Summary is what the start-up and reload log lines say of the filter.
func (f *Filter) Summary() string {
	s := fmt.Sprintf("%d allow, %d deny rules, %d DNS blocklists, decided at %s", len(f.opts.Allow), len(f.opts.Deny), len(f.opts.Sites), f.opts.DecideAt)
	if f.opts.Resolver != nil {
		s += " (DNS server " + f.opts.Resolver.Server() + ")"
	}
	return s
}

// Stages: the connection's stages, and MAIL (and RCPT) when deciding there.
func (f *Filter) Stages() (reads, decides pipeline.Stage) {
	reads = pipeline.StageConnect | pipeline.StageHelo | pipeline.StageMail
	switch f.opts.DecideAt {
	case AtMail:
		return reads, pipeline.StageMail
	case AtRcpt:
		return reads | pipeline.StageRcpt, pipeline.StageRcpt
	}
	return reads, pipeline.StageConnect | pipeline.StageHelo
}

// Macros: who logged in, and which of the MTA's listeners took the client.
func (f *Filter) Macros() map[pipeline.Stage][]string {
	return map[pipeline.Stage][]string{
		pipeline.StageConnect: {"{daemon_name}"},
		pipeline.StageMail:    {"{auth_authen}"},
	}
}

func (f *Filter) NewConnState(context.Context, *pipeline.Conn) (pipeline.ConnState, error) {
	return &connState{f: f}, nil
}

type connState struct {
	f       *Filter
	early   chan dnsbl.Result // the queries askEarly started, if it did
	exempt  bool              // an allow rule or an exempt listener
	judged  bool
	verdict verdict.Verdict
}

func (s *connState) Connect(ctx context.Context, c *pipeline.Conn) (verdict.Verdict, error) {
	if slices.Contains(s.f.opts.ExemptDaemons, c.Macro("{daemon_name}")) && c.Macro("{daemon_name}") != "" {
		s.exempt = true
		s.count("exempt listener")
		return verdict.Pass, nil
	}
	if s.f.opts.DecideAt != AtConnect {
		s.askEarly(c)
		return verdict.Pass, nil
	}
	return s.judge(ctx, c, false)
}

// askEarly starts the blocklist queries of a decision deferred to MAIL,
// so that they run while the client says EHLO (and logs in): the answer
// is usually there when the verdict is due.
func (s *connState) askEarly(c *pipeline.Conn) {
	client := clientrule.NewClient(c.Addr, c.Hostname, c.Helo)
	if len(s.f.opts.Sites) == 0 || !client.Addr.IsValid() {
		return
	}
	if _, ok := s.f.opts.Allow.First(client); ok {
		return
	}
	s.early = make(chan dnsbl.Result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.f.opts.DNSTimeout)
		defer cancel()
		s.early <- s.f.opts.Resolver.Check(ctx, client.Addr, s.f.opts.Sites)
	}()
}

func (s *connState) Helo(ctx context.Context, c *pipeline.Conn) (verdict.Verdict, error) {
	if s.exempt || s.f.opts.DecideAt != AtConnect || (!s.f.opts.Allow.HasHelo() && !s.f.opts.Deny.HasHelo()) {
		return verdict.Pass, nil
	}
	s.judged = false // HELO rules can now match
	return s.judge(ctx, c, true)
}

func (s *connState) Close() {}

func (s *connState) count(what string) {
	if s.f.opts.Stats != nil {
		s.f.opts.Stats.Hit(Name, what)
	}
}

// judge applies the rules and lists once per connection (again at HELO
// for HELO rules).
func (s *connState) judge(ctx context.Context, c *pipeline.Conn, helo bool) (verdict.Verdict, error) {
	if s.exempt {
		return verdict.Pass, nil
	}
	if s.judged {
		return s.verdict, nil
	}
	client := clientrule.NewClient(c.Addr, c.Hostname, c.Helo)
	if r, ok := s.f.opts.Allow.First(client); ok {
		s.exempt = true
		s.count("allow " + r.Text)
		return verdict.Pass, nil
	}
	if r, ok := s.f.opts.Deny.First(client); ok {
		s.judged, s.verdict = true, s.f.denied(fmt.Sprintf("client %s matches deny rule %s", describe(c), r.Text), "deny "+r.Text)
		return s.verdict, nil
	}
	if helo { // the lists were asked at connect
		s.judged = true
		return s.verdict, nil
	}
	v, err := s.f.lists(ctx, client.Addr, c, s.takeEarly(ctx))
	if err != nil {
		return verdict.Pass, err // on_error; asked again for the next message
	}
	s.judged, s.verdict = true, v
	return v, nil
}

func describe(c *pipeline.Conn) string {
	if c.Hostname != "" && !strings.HasPrefix(c.Hostname, "[") {
		return fmt.Sprintf("%s[%s]", pipeline.LogField(c.Hostname), c.Addr)
	}
	return "[" + c.Addr + "]"
}

func (f *Filter) denied(reason, key string) verdict.Verdict {
	var v verdict.Verdict
	if f.opts.Close {
		v = verdict.TempFailf(verdict.CodeServiceUnavailable, "4.7.0", "Access denied, closing connection")
	} else {
		v = verdict.Rejectf(verdict.CodeMailboxUnavailable, verdict.EnhDeliveryNotAuthorized, "Access denied")
	}
	v.Reason, v.Key = reason, key
	return v
}

// takeEarly waits for the queries askEarly started, once; nil when
// there are none (or the call ends first: then they are asked again).
func (s *connState) takeEarly(ctx context.Context) *dnsbl.Result {
	if s.early == nil {
		return nil
	}
	select {
	case r := <-s.early:
		s.early = nil
		return &r
	case <-ctx.Done():
		return nil
	}
}

// lists asks the DNS blocklists. A failure that leaves the client below
// the threshold is an error (on_error: by default the mail goes on); a
// listing stands whatever the other lists did.
func (f *Filter) lists(ctx context.Context, addr netip.Addr, c *pipeline.Conn, early *dnsbl.Result) (verdict.Verdict, error) {
	if len(f.opts.Sites) == 0 || !addr.IsValid() {
		return verdict.Pass, nil
	}
	res := early
	if res == nil {
		qctx, cancel := context.WithTimeout(ctx, f.opts.DNSTimeout)
		defer cancel()
		r := f.opts.Resolver.Check(qctx, addr, f.opts.Sites)
		res = &r
	}
	if res.Score >= f.opts.Threshold && len(res.Hits) > 0 {
		var zones []string
		for _, h := range res.Hits {
			zones = append(zones, fmt.Sprintf("%s (%s)", h.Zone, h.Answer))
		}
		v := verdict.Rejectf(verdict.CodeMailboxUnavailable, verdict.EnhDeliveryNotAuthorized,
			"Service unavailable; client [%s] blocked using %s", addr, res.Hits[0].Zone)
		v.Reason, v.Key = fmt.Sprintf("client %s listed: %s, score %d", describe(c), strings.Join(zones, ", "), res.Score), "dnsbl "+res.Hits[0].Zone
		return v, nil
	}
	if len(res.Errs) > 0 {
		return verdict.Pass, fmt.Errorf("DNS blocklists: %v", joinErrs(res.Errs))
	}
	return verdict.Pass, nil
}

func joinErrs(errs []error) string {
	var s []string
	for _, e := range errs {
		s = append(s, e.Error())
	}
	return strings.Join(s, "; ")
}

func (f *Filter) NewCheck(ctx context.Context, env *pipeline.Envelope) (pipeline.Check, error) {
	return &check{f: f}, nil
}

type check struct {
	pipeline.NopCheck
	f *Filter
}

// decide is the deferred decision, once per message: an authenticated
// client is exempt.
func (c *check) decide(ctx context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	s, _ := env.ConnState(c.f).(*connState)
	if s == nil {
		return verdict.Pass, nil
	}
	if c.f.opts.ExemptAuth && env.Macro("{auth_authen}") != "" {
		s.count("exempt authenticated")
		return verdict.Pass, nil
	}
	return s.judge(ctx, env.Conn, false)
}

func (c *check) MailFrom(ctx context.Context, env *pipeline.Envelope) (verdict.Verdict, error) {
	if c.f.opts.DecideAt != AtMail {
		return verdict.Pass, nil
	}
	return c.decide(ctx, env)
}

func (c *check) Rcpt(ctx context.Context, env *pipeline.Envelope, _, _ string) (verdict.Verdict, error) {
	if c.f.opts.DecideAt != AtRcpt {
		return verdict.Pass, nil
	}
	return c.decide(ctx, env)
}
