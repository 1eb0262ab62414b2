package pipeline

import (
	"fmt"
	"log/slog"
	"runtime/debug"

	"mailguard/internal/verdict"
)

// Member is a filter with its failure policy, as configured.
type Member struct {
	Filter  Filter
	OnError ErrorPolicy
}

// Pipeline is an immutable, ordered set of filters. A reload builds a new
// Pipeline; messages in flight keep the one they started with.
type Pipeline struct {
	members  []Member
	observer []bool
	modifies Modification
	env      Env
}

// New builds a pipeline. Filters run in the order given.
func New(env Env, members ...Member) *Pipeline {
	p := &Pipeline{members: members, env: env, observer: make([]bool, len(members))}
	for i, m := range members {
		_, p.observer[i] = m.Filter.(Observer)
		if mod, ok := m.Filter.(Modifier); ok {
			p.modifies |= mod.Modifies()
		}
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

// Filters returns the filter names in order.
func (p *Pipeline) Filters() []string {
	names := make([]string, len(p.members))
	for i, m := range p.members {
		names[i] = m.Filter.Name()
	}
	return names
}

// call runs one filter stage, turning an error or a panic into the filter's
// policy verdict and a log line. The boolean reports a failure.
func (p *Pipeline) call(i int, env *Envelope, stage string, fn func() (verdict.Verdict, error)) (v verdict.Verdict, failed bool) {
	m := p.members[i]
	defer func() {
		if r := recover(); r != nil {
			p.env.Log.Error("filter panicked", "filter", m.Filter.Name(), "stage", stage,
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()), envAttrs(env))
			v, failed = m.OnError.verdictFor(m.Filter.Name()), true
		}
	}()
	v, err := fn()
	if err != nil {
		p.env.Log.Error("filter failed", "filter", m.Filter.Name(), "stage", stage,
			"error", err.Error(), "on_error", m.OnError.String(), envAttrs(env))
		return m.OnError.verdictFor(m.Filter.Name()), true
	}
	if v.Final() && v.Filter == "" {
		v.Filter = m.Filter.Name()
	}
	return v, false
}

// Connect runs the connection filters on a new client.
func (p *Pipeline) Connect(c *Conn) verdict.Verdict {
	return p.connStage(c, StageConnect, "connect", ConnFilter.Connect)
}

// Helo runs the connection filters on the HELO name (c.Helo is set).
func (p *Pipeline) Helo(c *Conn) verdict.Verdict {
	return p.connStage(c, StageHelo, "helo", ConnFilter.Helo)
}

func (p *Pipeline) connStage(c *Conn, st Stage, name string, fn func(ConnFilter, *Conn) (verdict.Verdict, error)) verdict.Verdict {
	env := &Envelope{Conn: c}
	for i, m := range p.members {
		cf, ok := m.Filter.(ConnFilter)
		if r, _ := m.Filter.Stages(); !ok || r&st == 0 {
			continue
		}
		if v, _ := p.call(i, env, name, func() (verdict.Verdict, error) { return fn(cf, c) }); v.Final() {
			p.logDecision(env, v, "")
			return v
		}
	}
	return verdict.Pass
}

func envAttrs(env *Envelope) slog.Attr {
	if env == nil {
		return slog.Group("")
	}
	attrs := []any{"from", env.From, "rcpts", env.Rcpts}
	add := func(k, v string) {
		if v != "" {
			attrs = append(attrs, k, v)
		}
	}
	add("queue_id", env.QueueID)
	if env.Conn != nil {
		add("client", env.Conn.Addr)
		add("client_name", env.Conn.Hostname)
		add("helo", env.Conn.Helo)
	}
	return slog.Group("msg", attrs...)
}

// logDecision writes the one line per decision that postmasters grep for,
// and counts it for the summary.
func (p *Pipeline) logDecision(env *Envelope, v verdict.Verdict, rcpt string) {
	args := []any{"filter", v.Filter, "verdict", v.String(), "reason", v.Reason}
	if rcpt != "" {
		args = append(args, "rcpt", rcpt)
	}
	args = append(args, envAttrs(env))
	p.env.Log.Info("decision", args...)
	if p.env.Stats != nil {
		p.env.Stats.Hit(v.Filter, v.Reason)
	}
}

// logRemoval logs a recipient taken off a delivered message.
func (p *Pipeline) logRemoval(env *Envelope, r Removal) {
	p.env.Log.Info("decision", "filter", r.Filter, "verdict", "remove recipient", "reason", r.Reason, "rcpt", r.Rcpt, envAttrs(env))
	if p.env.Stats != nil {
		p.env.Stats.Hit(r.Filter, "remove recipient")
	}
}
