package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"mailguard/internal/metrics"
	"mailguard/internal/verdict"
)

// Member is a filter with its settings, as configured.
type Member struct {
	Filter  Filter
	OnError ErrorPolicy
	Mode    Mode
	// Timeout bounds each call of the filter; 0 is DefaultTimeout.
	Timeout time.Duration
}

// Pipeline is an immutable, ordered set of filters. A reload builds a new
// Pipeline for the connections that open from then on; a connection stays
// on the pipeline that opened it (an MTA opens one milter connection per
// SMTP session), and the old pipeline is closed when its last connection
// has ended (see Retire).
type Pipeline struct {
	members   []Member
	observer  []bool
	connector []Connector // nil where the filter keeps no connection state
	modifies  Modification
	macros    map[Stage][]string
	env       Env
	life      lifecycle
	// timers[i][s] times member i's calls at metrics.Stages[s]; nil
	// without metrics.
	timers [][]prometheus.Observer
}

// New builds a pipeline. Filters run in the order given.
func New(env Env, members ...Member) *Pipeline {
	p := &Pipeline{members: members, env: env, observer: make([]bool, len(members)), connector: make([]Connector, len(members))}
	for i := range p.members {
		m := &p.members[i]
		if m.Timeout <= 0 {
			m.Timeout = DefaultTimeout
		}
		_, p.observer[i] = m.Filter.(Observer)
		p.connector[i], _ = m.Filter.(Connector)
		if mod, ok := m.Filter.(Modifier); ok {
			p.modifies |= mod.Modifies()
		}
		if m.Mode == Monitor {
			p.modifies |= ModAddHeader // the X-Mailguard record
		}
	}
	for _, m := range p.members {
		if mu, ok := m.Filter.(MacroUser); ok {
			if p.macros == nil {
				p.macros = map[Stage][]string{}
			}
			for st, names := range mu.Macros() {
				p.macros[st] = append(p.macros[st], names...)
			}
		}
	}
	if env.Metrics != nil {
		p.timers = make([][]prometheus.Observer, len(members))
		for i, m := range p.members {
			p.timers[i] = make([]prometheus.Observer, len(metrics.Stages))
			for s, name := range metrics.Stages {
				p.timers[i][s] = env.Metrics.CallTimer(m.Filter.Name(), name)
			}
		}
	}
	if p.env.MaxRecipients <= 0 {
		p.env.MaxRecipients = DefaultMaxRecipients
	}
	return p
}

// Stages returns the union of the filters' stages: which the front door must
// ask the MTA for, and at which it must reply. It is asked anew for each
// connection, since a filter's needs may change (a capture switched on).
func (p *Pipeline) Stages() (reads, decides Stage) {
	for _, m := range p.members {
		r, d := m.Filter.Stages()
		reads |= r | d
		decides |= d
	}
	return reads, decides
}

// Modifies returns the union of the changes the filters may make.
func (p *Pipeline) Modifies() Modification { return p.modifies }

// Macros returns the macros the filters read, by stage; nil if none does.
// The caller must not change it.
func (p *Pipeline) Macros() map[Stage][]string { return p.macros }

// Summaries returns, for the start-up and reload log lines, what each
// filter that says so has loaded ("virus": "23 signatures from FILE").
func (p *Pipeline) Summaries() []any {
	var out []any
	for _, m := range p.members {
		if s, ok := m.Filter.(interface{ Summary() string }); ok {
			out = append(out, slog.String(m.Filter.Name(), s.Summary()))
		}
	}
	return out
}

// Filters returns the filter names in order.
func (p *Pipeline) Filters() []string {
	names := make([]string, len(p.members))
	for i, m := range p.members {
		names[i] = m.Filter.Name()
	}
	return names
}

// call runs one filter call with its own context (the filter's timeout
// under parent), turning an error, a timeout or a panic into the filter's
// policy verdict and a log line. The boolean reports a failure.
func (p *Pipeline) call(parent context.Context, i int, env *Envelope, stage string, fn func(ctx context.Context) (verdict.Verdict, error)) (v verdict.Verdict, failed bool) {
	m := &p.members[i]
	start := time.Now()
	ctx := newLazyCtx(parent, start.Add(m.Timeout))
	env.caller = m
	defer func() {
		if p.timers != nil {
			if s := stageIndex(stage); s >= 0 {
				p.timers[i][s].Observe(time.Since(start).Seconds())
			}
		}
		env.caller = nil
		if r := recover(); r != nil {
			p.env.Log.Error("filter panicked", "filter", m.Filter.Name(), "stage", stage,
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()), envAttrs(env))
			v, failed = m.OnError.verdictFor(m.Filter.Name(), "panic"), true
			p.count(m.Filter.Name(), "panic")
		}
		ctx.cancel(context.Canceled)
	}()
	v, err := fn(ctx)
	if err != nil {
		return p.failure(ctx, parent, m, env, stage, err), true
	}
	if v.Final() && v.Filter == "" {
		v.Filter = m.Filter.Name()
	}
	return v, false
}

// failure logs and counts a failed call and returns the policy verdict:
// a timeout (the filter's own) is told apart from an error, and a call
// cut short because the MTA went away or the daemon is stopping is no
// fault of the filter's.
func (p *Pipeline) failure(ctx *lazyCtx, parent context.Context, m *Member, env *Envelope, stage string, err error) verdict.Verdict {
	name := m.Filter.Name()
	reason := "error"
	ctx.Err() // settles a deadline the filter used without asking Done
	switch {
	case parent.Err() != nil:
		reason = "cancelled"
		p.env.Log.Info("filter call cancelled", "filter", name, "stage", stage, "cause", cancelCause(parent), envAttrs(env))
	case ctx.timedOut() || errors.Is(err, context.DeadlineExceeded):
		reason = "timeout"
		p.env.Log.Warn("filter timed out", "filter", name, "stage", stage, "timeout", m.Timeout.String(),
			"error", err.Error(), "on_error", m.OnError.String(), envAttrs(env))
	default:
		p.env.Log.Error("filter failed", "filter", name, "stage", stage,
			"error", err.Error(), "on_error", m.OnError.String(), envAttrs(env))
	}
	p.count(name, reason)
	p.env.Metrics.Failure(name, reason)
	return m.OnError.verdictFor(name, reason)
}

// stageIndex is stage's place in metrics.Stages, or -1.
func stageIndex(stage string) int {
	switch stage {
	case "connection":
		return 0
	case "connect":
		return 1
	case "helo":
		return 2
	case "start":
		return 3
	case "mail":
		return 4
	case "rcpt":
		return 5
	case "header":
		return 6
	case "eoh":
		return 7
	case "body":
		return 8
	case "eom":
		return 9
	}
	return -1
}

// stageClock is the start of a stage to time: zero without metrics, so
// a daemon without them reads no clock for it.
func (p *Pipeline) stageClock() time.Time {
	if p.env.Metrics == nil {
		return time.Time{}
	}
	return time.Now()
}

// timeStage observes a whole stage's time since start, if there are
// metrics.
func (p *Pipeline) timeStage(stage string, start time.Time) {
	if start.IsZero() {
		return
	}
	if o := p.env.Metrics.StageTimer(stage); o != nil {
		o.Observe(time.Since(start).Seconds())
	}
}

func cancelCause(ctx context.Context) string {
	if c := context.Cause(ctx); c != nil {
		return c.Error()
	}
	return ctx.Err().Error()
}

func (p *Pipeline) count(filter, reason string) { p.env.Hit(filter, reason) }

// record tells the status page of a decision.
func (p *Pipeline) record(env *Envelope, verdict, filter, reason, key, rcpt string) {
	if p.env.Metrics == nil {
		return
	}
	d := metrics.Decision{Verdict: verdict, Filter: filter, Reason: LogField(reason), Key: key}
	if env != nil {
		d.From = LogField(env.From)
		if env.Conn != nil {
			d.Client = LogField(env.Conn.Addr)
		}
		rcpts := env.Rcpts
		if rcpt != "" {
			rcpts = []string{rcpt}
		}
		n := min(len(rcpts), metrics.MaxRcpts)
		d.Rcpts = make([]string, n)
		for i := range n {
			d.Rcpts[i] = LogField(rcpts[i])
		}
		d.More = len(rcpts) - n
	}
	p.env.Metrics.Decision(d)
}

// maxLoggedRcpts bounds the recipients one log line lists, and
// maxLoggedField the bytes of one field a client chose (a host name, an
// address, a HELO): a hostile client must not make log lines huge.
const (
	maxLoggedRcpts = 10
	maxLoggedField = 256
)

// LogField bounds a client-chosen string for a log line.
func LogField(s string) string {
	if len(s) <= maxLoggedField {
		return s
	}
	return fmt.Sprintf("%s...(%d bytes)", strings.ToValidUTF8(s[:maxLoggedField], ""), len(s))
}

func envAttrs(env *Envelope) slog.Attr {
	if env == nil {
		return slog.Group("")
	}
	rcpts := make([]string, 0, min(len(env.Rcpts), maxLoggedRcpts+1))
	for _, r := range env.Rcpts[:min(len(env.Rcpts), maxLoggedRcpts)] {
		rcpts = append(rcpts, LogField(r))
	}
	if len(env.Rcpts) > maxLoggedRcpts {
		rcpts = append(rcpts, fmt.Sprintf("and %d more", len(env.Rcpts)-maxLoggedRcpts))
	}
	attrs := []any{"from", LogField(env.From), "rcpts", rcpts}
	add := func(k, v string) {
		if v != "" {
			attrs = append(attrs, k, LogField(v))
		}
	}
	add("queue_id", env.QueueID)
	if env.Conn != nil {
		add("client", env.Conn.Addr)
		add("client_name", env.Conn.Hostname)
		add("helo", env.Conn.Helo)
	}
	// "mail", not "msg": JSON lines already have a "msg" key (the log
	// message), which a group of that name would overwrite.
	return slog.Group("mail", attrs...)
}

// logDecision writes the one line per decision that postmasters grep for,
// and counts it for the summary. A failed filter's policy verdict was
// counted as its failure already.
func (p *Pipeline) logDecision(env *Envelope, v verdict.Verdict, rcpt string) {
	args := []any{"filter", v.Filter, "verdict", v.String(), "reason", v.Reason}
	if rcpt != "" {
		args = append(args, "rcpt", LogField(rcpt))
	}
	args = append(args, envAttrs(env))
	p.env.Log.Info("decision", args...)
	if !v.Policy {
		p.count(v.Filter, v.CounterKey())
	}
	p.record(env, v.String(), v.Filter, v.Reason, v.Filter+":"+v.CounterKey(), rcpt)
}

// logMonitor writes what a filter in monitor mode would have done.
func (p *Pipeline) logMonitor(env *Envelope, h MonitorHit) {
	args := []any{"filter", h.Filter, "mode", "monitor", "verdict", "would " + h.Action, "reason", h.Reason, "stage", h.Stage}
	if h.Rcpt != "" {
		args = append(args, "rcpt", LogField(h.Rcpt))
	}
	args = append(args, envAttrs(env))
	p.env.Log.Info("decision", args...)
	p.count(h.Filter, "would "+strings.Fields(h.Action)[0])
}

// logDropped logs, one line per filter and reason, the changes a bound
// dropped, and counts each under key.
func (p *Pipeline) logDropped(env *Envelope, dropped []droppedChange, msg, key string) {
	for _, d := range dropped {
		p.env.Log.Warn(msg, "filter", d.Filter, "reason", d.Reason, "count", d.Count, "header", d.Header, envAttrs(env))
		for range d.Count {
			p.count(d.Filter, key)
		}
	}
}

// logChanges logs a delivered message's recipient removals, the header
// changes dropped, and the changes the MTA does not allow (so they were
// not made).
func (p *Pipeline) logChanges(env *Envelope) {
	p.logDropped(env, env.dropped, "header changes dropped", "header change dropped")
	for _, r := range env.Removed {
		if env.Allowed&ModRemoveRcpt == 0 {
			p.env.Log.Warn("recipient not removed: the MTA does not allow milters to remove recipients",
				"filter", r.Filter, "reason", r.Reason, "rcpt", r.Rcpt, envAttrs(env))
			p.count(r.Filter, "change not made")
			continue
		}
		p.env.Log.Info("decision", "filter", r.Filter, "verdict", "remove recipient", "reason", r.Reason, "rcpt", r.Rcpt, envAttrs(env))
		p.count(r.Filter, "remove recipient")
	}
	for _, h := range env.headers {
		need := ModAddHeader
		if h.Op == HeaderReplace {
			need = ModChangeHeader
		}
		if env.Allowed&need == 0 {
			p.env.Log.Warn("header not changed: the MTA does not allow milters to change headers",
				"filter", h.Filter, "header", h.Name, envAttrs(env))
			p.count(h.Filter, "change not made")
		}
	}
}
