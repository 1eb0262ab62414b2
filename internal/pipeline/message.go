package pipeline

import (
	"mailguard/internal/verdict"
)

// Message is the pipeline's state for one message. It is created at MAIL
// FROM and must be closed (after the end of the message, an abort or a
// disconnect) so every filter can free its state.
type Message struct {
	p      *Pipeline
	env    Envelope
	checks []Check // per member; nil when the filter failed or does not take part
	final  verdict.Verdict
	logged bool // the final verdict's log line is written
	closed bool
}

// Begin starts a message on connection c with the MAIL FROM data and runs
// the MAIL stage. delivered is the set of stages the front door will pass
// on. The returned verdict is final if the message is refused.
func (p *Pipeline) Begin(c *Conn, delivered Stage, from, args string) (*Message, verdict.Verdict) {
	m := &Message{p: p, env: Envelope{Conn: c, From: from, FromArgs: args, Delivered: delivered}, checks: make([]Check, len(p.members))}
	if p.env.Stats != nil {
		p.env.Stats.Message()
	}
	for i, mem := range p.members {
		if m.final.Final() && !p.observer[i] {
			continue
		}
		var chk Check
		v, failed := p.call(i, &m.env, "start", func() (verdict.Verdict, error) {
			var err error
			chk, err = mem.Filter.NewCheck(&m.env)
			return verdict.Pass, err
		})
		m.checks[i] = chk
		if failed {
			m.decide(v)
		}
	}
	return m, m.run(StageMail, "mail", func(c Check) (verdict.Verdict, error) { return c.MailFrom(&m.env) })
}

// Envelope returns the message's envelope (read-only for callers).
func (m *Message) Envelope() *Envelope { return &m.env }

// SetQueueID records the MTA's queue id once it is known.
func (m *Message) SetQueueID(id string) {
	if id != "" {
		m.env.QueueID = id
	}
}

// Decided returns the final verdict so far, if any.
func (m *Message) Decided() (verdict.Verdict, bool) { return m.final, m.final.Final() }

// decide records a final verdict. It reports whether the message is now
// decided. The log line waits for the end of the message, when the MTA
// has told us its queue id.
func (m *Message) decide(v verdict.Verdict) bool {
	if !v.Final() || m.final.Final() {
		return m.final.Final()
	}
	m.final = v
	m.env.Final = v
	return true
}

func (m *Message) logFinal() {
	if m.final.Final() && !m.logged {
		m.logged = true
		m.p.logDecision(&m.env, m.final, "")
	}
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
func (m *Message) run(st Stage, name string, fn func(Check) (verdict.Verdict, error)) verdict.Verdict {
	for i := range m.p.members {
		if !m.active(i, st) {
			continue
		}
		chk := m.checks[i]
		v, failed := m.p.call(i, &m.env, name, func() (verdict.Verdict, error) { return fn(chk) })
		if failed {
			m.dropCheck(i)
		}
		if !m.p.observer[i] {
			m.decide(v)
		}
	}
	return m.final
}

func (m *Message) dropCheck(i int) {
	if c := m.checks[i]; c != nil {
		m.checks[i] = nil
		m.p.closeCheck(i, c)
	}
}

// Rcpt runs the RCPT stage for one recipient. A Reject or TempFail answer
// refuses only this recipient; the message goes on for the others.
func (m *Message) Rcpt(rcpt, args string) verdict.Verdict {
	if m.final.Final() {
		return m.final
	}
	for i := range m.p.members {
		if !m.active(i, StageRcpt) || m.p.observer[i] {
			continue
		}
		chk := m.checks[i]
		v, failed := m.p.call(i, &m.env, "rcpt", func() (verdict.Verdict, error) { return chk.Rcpt(&m.env, rcpt, args) })
		if failed {
			m.dropCheck(i)
		}
		switch v.Action {
		case verdict.Continue:
			continue
		case verdict.Reject, verdict.TempFail:
			m.p.logDecision(&m.env, v, rcpt)
			return v
		default: // accept or discard decide the whole message
			m.env.Rcpts = append(m.env.Rcpts, rcpt)
			m.decide(v)
			return v
		}
	}
	m.env.Rcpts = append(m.env.Rcpts, rcpt)
	// Observers see the recipients that were accepted.
	for i := range m.p.members {
		if m.p.observer[i] && m.active(i, StageRcpt) {
			chk := m.checks[i]
			if _, failed := m.p.call(i, &m.env, "rcpt", func() (verdict.Verdict, error) { return chk.Rcpt(&m.env, rcpt, args) }); failed {
				m.dropCheck(i)
			}
		}
	}
	return verdict.Pass
}

// Header runs the header stage for one header field.
func (m *Message) Header(name, value string) verdict.Verdict {
	return m.run(StageHeader, "header", func(c Check) (verdict.Verdict, error) { return c.Header(name, value) })
}

// EndOfHeaders runs the end-of-headers stage.
func (m *Message) EndOfHeaders() verdict.Verdict {
	return m.run(StageEndOfHeaders, "eoh", func(c Check) (verdict.Verdict, error) { return c.EndOfHeaders(&m.env) })
}

// Body runs the body stage on one chunk.
func (m *Message) Body(chunk []byte) verdict.Verdict {
	return m.run(StageBody, "body", func(c Check) (verdict.Verdict, error) { return c.Body(chunk) })
}

// End runs the end-of-message stage and returns the message's verdict:
// a final one, or Pass (deliver).
func (m *Message) End() verdict.Verdict {
	v := m.run(StageEndOfMessage, "eom", func(c Check) (verdict.Verdict, error) { return c.EndOfMessage(&m.env) })
	m.logFinal()
	if !v.Final() {
		for _, r := range m.env.Removed {
			m.p.logRemoval(&m.env, r)
		}
	}
	return v
}

// Close frees every filter's state. It is safe to call more than once.
func (m *Message) Close() {
	if m == nil || m.closed {
		return
	}
	m.closed = true
	m.logFinal() // a message refused before its end (at MAIL, say)
	for i, c := range m.checks {
		if c != nil {
			m.checks[i] = nil
			m.p.closeCheck(i, c)
		}
	}
}

func (p *Pipeline) closeCheck(i int, c Check) {
	defer func() {
		if r := recover(); r != nil {
			p.env.Log.Error("filter panicked in Close", "filter", p.members[i].Filter.Name(), "panic", r)
		}
	}()
	c.Close()
}
