package pipeline

import (
	"context"
	"time"

	"mailguard/internal/verdict"
)

// Connection is the pipeline's state for one client connection: the
// filters' per-connection state and the connection stages. A front door
// opens one per milter connection (or scanned message) and closes it when
// the connection ends.
type Connection struct {
	p      *Pipeline
	conn   *Conn
	ctx    *lazyCtx
	states []ConnState // per member; nil where the filter keeps none
	final  verdict.Verdict
	hits   []MonitorHit // what monitor-mode filters would have done at connect or HELO
	closed bool
}

// Open starts a connection for client c. ctx ends when the client goes
// away or the daemon stops; every filter call gets a context below it.
// The caller holds p (Hold) or owns it, so p is not closed; the
// connection keeps p open until Close.
// Connection filters' states are created here; their Connect and Helo run
// when the front door calls Connect and Helo.
func (p *Pipeline) Open(ctx context.Context, c *Conn) *Connection {
	cn := &Connection{p: p, conn: c, ctx: newLazyCtx(ctx, time.Time{})}
	p.life.use() // the caller holds p (Hold), or owns it: it is not closed
	env := &Envelope{Conn: c}
	for i, con := range p.connector {
		if con == nil {
			continue
		}
		if cn.states == nil {
			cn.states = make([]ConnState, len(p.members))
		}
		var st ConnState
		v, failed := p.call(cn.ctx, i, env, "connection", func(ctx context.Context) (verdict.Verdict, error) {
			var err error
			st, err = con.NewConnState(ctx, c)
			return verdict.Pass, err
		})
		cn.states[i] = st
		if failed {
			cn.decide(i, v, "connection", env)
		}
	}
	return cn
}

// Pipeline is the pipeline the connection runs.
func (cn *Connection) Pipeline() *Pipeline { return cn.p }

// Cancel ends the context of the connection's calls: the client is gone.
func (cn *Connection) Cancel() { cn.ctx.cancel(context.Canceled) }

// Connect runs the connect stage.
func (cn *Connection) Connect() verdict.Verdict {
	return cn.stage(StageConnect, "connect", ConnState.Connect)
}

// Helo runs the HELO stage (c.Helo is set).
func (cn *Connection) Helo() verdict.Verdict {
	return cn.stage(StageHelo, "helo", ConnState.Helo)
}

func (cn *Connection) stage(st Stage, name string, fn func(ConnState, context.Context, *Conn) (verdict.Verdict, error)) verdict.Verdict {
	if cn.final.Final() {
		return cn.final
	}
	defer cn.p.timeStage(name, cn.p.stageClock())
	env := &Envelope{Conn: cn.conn}
	for i, state := range cn.states {
		if state == nil {
			continue
		}
		if r, d := cn.p.members[i].Filter.Stages(); (r|d)&st == 0 {
			continue
		}
		v, failed := cn.p.call(cn.ctx, i, env, name, func(ctx context.Context) (verdict.Verdict, error) { return fn(state, ctx, cn.conn) })
		if failed {
			cn.dropState(i)
		}
		if cn.decide(i, v, name, env) {
			return cn.final
		}
	}
	return verdict.Pass
}

// decide records a connection stage's verdict; a monitor-mode filter's
// is only logged. It reports whether the connection is now decided.
func (cn *Connection) decide(i int, v verdict.Verdict, stage string, env *Envelope) bool {
	if !v.Final() {
		return false
	}
	if cn.p.members[i].Mode == Monitor {
		h := MonitorHit{Filter: cn.p.members[i].Filter.Name(), Action: v.String(), Reason: v.Reason, Stage: stage}
		cn.p.logMonitor(env, h)
		h.logged = true
		if len(cn.hits) < maxMonitorHits {
			cn.hits = append(cn.hits, h)
		}
		return false
	}
	cn.final = v
	cn.p.logDecision(env, v, "")
	return true
}

func (cn *Connection) dropState(i int) {
	if st := cn.states[i]; st != nil {
		cn.states[i] = nil
		cn.p.closeSafely(i, "closing connection state", st.Close)
	}
}

// ConnState returns the connection state of filter f, or nil.
func (e *Envelope) ConnState(f Filter) ConnState {
	cn := e.conn
	if cn == nil {
		return nil
	}
	for i, m := range cn.p.members {
		if m.Filter == f && cn.states != nil {
			return cn.states[i]
		}
	}
	return nil
}

// Close frees every filter's connection state and lets go of the
// pipeline (the last connection of a retired pipeline closes it). It is
// safe to call more than once; messages must be closed first.
func (cn *Connection) Close() {
	if cn == nil || cn.closed {
		return
	}
	cn.closed = true
	for i := range cn.states {
		cn.dropState(i)
	}
	cn.ctx.cancel(context.Canceled)
	cn.p.Release()
}
