package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"mailguard/internal/verdict"
)

// Message is the pipeline's state for one message. It is created at MAIL
// FROM and must be closed (after the end of the message, an abort or a
// disconnect) so every filter can free its state.
type Message struct {
	p       *Pipeline
	ctx     *lazyCtx
	env     Envelope
	checks  []Check // per member; nil when the filter failed or does not take part
	final   verdict.Verdict
	logged  bool // the final verdict's log line is written
	counted bool // the message's outcome is counted for the summary
	// tooMany counts recipients refused past max_recipients.
	tooMany int
	closed  bool
	owned   *Connection // opened by Pipeline.Begin, closed with the message
}

// Begin starts a message on a connection of its own, as an offline front
// door does: every stage delivered and every change allowed. Close closes
// the connection too.
func (p *Pipeline) Begin(c *Conn, delivered Stage, from, args string) (*Message, verdict.Verdict) {
	cn := p.Open(context.Background(), c)
	m, v := cn.Begin(delivered, AllModifications, from, args)
	m.owned = cn
	return m, v
}

// Begin starts a message on the connection with the MAIL FROM data and
// runs the MAIL stage. delivered is the set of stages the front door will
// pass on, allowed the changes it can make. The returned verdict is final
// if the message is refused (at MAIL, or at connect or HELO when that
// verdict could not be given there).
func (cn *Connection) Begin(delivered Stage, allowed Modification, from, args string) (*Message, verdict.Verdict) {
	p := cn.p
	m := &Message{p: p, ctx: newLazyCtx(cn.ctx, time.Time{}), checks: make([]Check, len(p.members)),
		env: Envelope{Conn: cn.conn, From: from, FromArgs: args, Delivered: delivered, Allowed: allowed, conn: cn}}
	m.env.monitored = append(m.env.monitored, cn.hits...)
	if p.env.Stats != nil {
		p.env.Stats.Message()
	}
	p.env.Metrics.Message()
	if cn.final.Final() { // logged at its stage
		m.final, m.env.final, m.logged = cn.final, cn.final, true
	}
	if len(from) > MaxPathLength {
		v := verdict.Rejectf(verdict.CodePathTooLong, verdict.EnhBadSenderSyntax, "Sender address too long")
		v.Filter, v.Reason, v.Key = limitsFilter, fmt.Sprintf("sender address of %d bytes", len(from)), "sender address too long"
		m.env.From = from[:MaxPathLength]
		m.decideLimit(v)
	}
	for i, mem := range p.members {
		if m.final.Final() && !p.observer[i] {
			continue
		}
		var chk Check
		v, failed := p.call(m.ctx, i, &m.env, "start", func(ctx context.Context) (verdict.Verdict, error) {
			var err error
			chk, err = mem.Filter.NewCheck(ctx, &m.env)
			return verdict.Pass, err
		})
		m.checks[i] = chk
		if failed {
			m.decide(i, v, "start")
		}
	}
	return m, m.run(StageMail, "mail", func(ctx context.Context, c Check) (verdict.Verdict, error) { return c.MailFrom(ctx, &m.env) })
}

// Envelope returns the message's envelope (read-only for callers).
func (m *Message) Envelope() *Envelope { return &m.env }

// SetQueueID records the MTA's queue id once it is known.
func (m *Message) SetQueueID(id string) {
	if id != "" {
		m.env.QueueID = id
	}
}

// Cancel ends the context of the message's filter calls: the MTA hung
// up or aborted. Safe to call from another goroutine.
func (m *Message) Cancel() { m.ctx.cancel(context.Canceled) }

// Decided returns the final verdict so far, if any.
func (m *Message) Decided() (verdict.Verdict, bool) { return m.final, m.final.Final() }

// decide takes member i's verdict at a stage. An observer's is ignored; a
// monitor-mode filter's is recorded as what it would have done, and the
// filter is done with the message, as it would be if it enforced: a
// filter that decided during the body answers the same at every later
// chunk and at the end, and each answer would be another record. It
// reports whether the message is now decided. The log line waits for the
// end of the message, when the MTA has told us its queue id.
func (m *Message) decide(i int, v verdict.Verdict, stage string) bool {
	switch {
	case !v.Final() || m.p.observer[i] || m.final.Final():
		return m.final.Final()
	case m.p.members[i].Mode == Monitor:
		m.env.monitor(MonitorHit{Filter: m.p.members[i].Filter.Name(), Action: v.String(), Reason: v.Reason, Stage: stage})
		m.dropCheck(i)
		return false
	}
	m.final = v
	m.env.final = v
	return true
}

func (m *Message) logFinal() {
	if m.tooMany > 1 {
		m.p.env.Log.Info("decision", "filter", limitsFilter, "verdict", "tempfail 452 4.5.3 Too many recipients",
			"reason", fmt.Sprintf("%d more recipients over %d", m.tooMany-1, m.p.env.MaxRecipients), envAttrs(&m.env))
		m.tooMany = 1
	}
	if m.final.Final() && !m.logged {
		m.logged = true
		m.p.logDecision(&m.env, m.final, "")
	}
	for i := range m.env.monitored {
		if h := &m.env.monitored[i]; !h.logged {
			h.logged = true
			m.p.logMonitor(&m.env, *h)
		}
	}
	m.p.logDropped(&m.env, m.env.monitorDropped, "monitor records dropped", "monitor record dropped")
	m.env.monitorDropped = nil
}

// countOutcome counts what became of the message for the summary, once:
// the final verdict's action and filter, else what the caller says
// ("accepted" at the end, "aborted" when closed before it).
func (m *Message) countOutcome(otherwise string) {
	if m.counted {
		return
	}
	m.counted = true
	outcome, filter := otherwise, ""
	if m.final.Final() {
		outcome = map[verdict.Action]string{verdict.Reject: "rejected", verdict.TempFail: "tempfailed",
			verdict.Discard: "discarded", verdict.Accept: "accepted"}[m.final.Action]
		filter = m.final.Filter
	}
	if m.p.env.Stats != nil {
		m.p.env.Stats.Verdict(outcome, filter)
	}
	m.p.env.Metrics.Verdict(outcome, filter)
}

// active reports whether member i takes part in stage st now: it has a
// check, reads the stage, and either nothing is decided yet or it observes.
func (m *Message) active(i int, st Stage) bool {
	if m.checks[i] == nil {
		return false
	}
	if m.p.observer[i] {
		return true // observers see every stage; no need to ask (capture reads a clock to answer)
	}
	if m.final.Final() {
		return false
	}
	r, d := m.p.members[i].Filter.Stages()
	return (r|d)&st != 0
}

// run calls stage st on every check that takes part. The first final
// verdict becomes the message's; after it only observers are called.
func (m *Message) run(st Stage, name string, fn func(context.Context, Check) (verdict.Verdict, error)) verdict.Verdict {
	defer m.p.timeStage(name, m.p.stageClock())
	for i := range m.p.members {
		if !m.active(i, st) {
			continue
		}
		chk := m.checks[i]
		v, failed := m.p.call(m.ctx, i, &m.env, name, func(ctx context.Context) (verdict.Verdict, error) { return fn(ctx, chk) })
		if failed {
			m.dropCheck(i)
		}
		m.decide(i, v, name)
	}
	return m.final
}

func (m *Message) dropCheck(i int) {
	if c := m.checks[i]; c != nil {
		m.checks[i] = nil
		m.p.closeSafely(i, "closing check", c.Close)
	}
}

// Rcpt runs the RCPT stage for one recipient. A Reject or TempFail answer
// refuses only this recipient; the message goes on for the others.
func (m *Message) Rcpt(rcpt, args string) verdict.Verdict {
	if m.final.Final() {
		return m.final
	}
	defer m.p.timeStage("rcpt", m.p.stageClock())
	if v, over := m.rcptLimits(rcpt); over {
		// One line for the first recipient over the limit; the rest are
		// counted and told at the end, or 100,000 RCPTs make as many lines.
		if v.Code != verdict.CodeTooManyRecipients || m.tooMany == 0 {
			m.p.logDecision(&m.env, v, rcpt)
		}
		if v.Code == verdict.CodeTooManyRecipients {
			m.tooMany++
		}
		return v
	}
	for i := range m.p.members {
		if !m.active(i, StageRcpt) || m.p.observer[i] {
			continue
		}
		chk := m.checks[i]
		v, failed := m.p.call(m.ctx, i, &m.env, "rcpt", func(ctx context.Context) (verdict.Verdict, error) { return chk.Rcpt(ctx, &m.env, rcpt, args) })
		if failed {
			m.dropCheck(i)
		}
		if !v.Final() {
			continue
		}
		if m.p.members[i].Mode == Monitor {
			m.env.monitor(MonitorHit{Filter: m.p.members[i].Filter.Name(), Action: v.String(), Rcpt: rcpt, Reason: v.Reason, Stage: "rcpt"})
			continue
		}
		switch v.Action {
		case verdict.Reject, verdict.TempFail:
			m.p.logDecision(&m.env, v, rcpt)
			return v
		default: // accept or discard decide the whole message
			m.env.Rcpts = append(m.env.Rcpts, rcpt)
			m.decide(i, v, "rcpt")
			return v
		}
	}
	m.env.Rcpts = append(m.env.Rcpts, rcpt)
	// Observers see the recipients that were accepted.
	for i := range m.p.members {
		if m.p.observer[i] && m.active(i, StageRcpt) {
			chk := m.checks[i]
			if _, failed := m.p.call(m.ctx, i, &m.env, "rcpt", func(ctx context.Context) (verdict.Verdict, error) { return chk.Rcpt(ctx, &m.env, rcpt, args) }); failed {
				m.dropCheck(i)
			}
		}
	}
	return verdict.Pass
}

// rcptLimits refuses a recipient past the message's limits: too long an
// address, or one recipient too many.
func (m *Message) rcptLimits(rcpt string) (verdict.Verdict, bool) {
	var v verdict.Verdict
	switch {
	case len(rcpt) > MaxPathLength:
		v = verdict.Rejectf(verdict.CodePathTooLong, verdict.EnhBadDestinationSyntax, "Recipient address too long")
		v.Reason, v.Key = fmt.Sprintf("recipient address of %d bytes", len(rcpt)), "recipient address too long"
	case len(m.env.Rcpts) >= m.p.env.MaxRecipients:
		v = verdict.TempFailf(verdict.CodeTooManyRecipients, verdict.EnhTooManyRecipients, "Too many recipients")
		v.Reason, v.Key = fmt.Sprintf("over %d recipients", m.p.env.MaxRecipients), "too many recipients"
	default:
		return verdict.Pass, false
	}
	v.Filter = limitsFilter
	return v, true
}

// decideLimit makes a limit's refusal the message's verdict.
func (m *Message) decideLimit(v verdict.Verdict) {
	if !m.final.Final() {
		m.final, m.env.final = v, v
	}
}

// Header runs the header stage for one header field.
func (m *Message) Header(name, value string) verdict.Verdict {
	m.env.headerFields++
	return m.run(StageHeader, "header", func(ctx context.Context, c Check) (verdict.Verdict, error) { return c.Header(ctx, name, value) })
}

// EndOfHeaders runs the end-of-headers stage.
func (m *Message) EndOfHeaders() verdict.Verdict {
	return m.run(StageEndOfHeaders, "eoh", func(ctx context.Context, c Check) (verdict.Verdict, error) { return c.EndOfHeaders(ctx, &m.env) })
}

// Body runs the body stage on one chunk; the chunk is valid only during
// the call (see Check.Body).
func (m *Message) Body(chunk []byte) verdict.Verdict {
	return m.run(StageBody, "body", func(ctx context.Context, c Check) (verdict.Verdict, error) { return c.Body(ctx, chunk) })
}

// End runs the end-of-message stage and returns the message's verdict:
// a final one, or Pass (deliver). For a delivered message, the envelope's
// Removed and Headers are the changes to make, X-Mailguard records of
// monitor-mode filters among them.
func (m *Message) End() verdict.Verdict {
	v := m.run(StageEndOfMessage, "eom", func(ctx context.Context, c Check) (verdict.Verdict, error) { return c.EndOfMessage(ctx, &m.env) })
	if !v.Final() {
		for _, h := range m.env.monitored {
			m.env.headers = append(m.env.headers, HeaderChange{Op: HeaderAdd, Name: MonitorHeader, Value: h.headerValue(), Filter: h.Filter})
		}
	}
	m.logFinal()
	m.countOutcome("accepted")
	if !v.Final() {
		m.p.logChanges(&m.env)
		// At debug level, accepted messages get their line too. Asked
		// first, so the hot path builds no arguments at info level.
		if m.p.env.Log.Enabled(context.Background(), slog.LevelDebug) {
			m.p.env.Log.Debug("decision", "verdict", "accept", envAttrs(&m.env))
		}
		m.p.record(&m.env, "accept", "", "", "", "")
	}
	return v
}

// MonitorHeader records, on a delivered message, what a filter in monitor
// mode would have done.
const MonitorHeader = "X-Mailguard"

// headerValue is the X-Mailguard value for a monitor hit. A recipient's
// refusal names the recipient but not the reason, which may describe
// another person's mailbox.
func (h MonitorHit) headerValue() string {
	if h.Rcpt != "" {
		return cleanHeaderValue(fmt.Sprintf("monitor; filter=%s; would %s; rcpt=<%s>", h.Filter, h.Action, h.Rcpt))
	}
	s := fmt.Sprintf("monitor; filter=%s; would %s", h.Filter, h.Action)
	if h.Reason != "" {
		s += "; reason=" + h.Reason
	}
	return cleanHeaderValue(s)
}

// Close frees every filter's state. It is safe to call more than once.
func (m *Message) Close() {
	if m == nil || m.closed {
		return
	}
	m.closed = true
	m.logFinal() // a message refused before its end (at MAIL, say)
	m.countOutcome("aborted")
	for i := range m.checks {
		m.dropCheck(i)
	}
	m.ctx.cancel(context.Canceled)
	m.owned.Close()
}

func (p *Pipeline) closeSafely(i int, what string, close func()) {
	defer func() {
		if r := recover(); r != nil {
			p.env.Log.Error("filter panicked "+what, "filter", p.members[i].Filter.Name(), "panic", fmt.Sprint(r))
		}
	}()
	close()
}
