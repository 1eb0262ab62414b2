// Package milterdoor is the milter front door: it speaks the milter protocol
// (version 6, as Postfix and Sendmail do) and drives the pipeline with what
// the MTA sends.
//
// It asks the MTA only for the stages some filter reads, and negotiates the
// v6 no-reply flags for every stage at which no filter must answer at once,
// so an ordinary message costs one round trip (end of message) after option
// negotiation.
//
// The protocol loop is our own rather than github.com/d--j/go-milter's
// server (whose client, constants and reply formatting we use): that server
// allocates a fresh buffer for every packet and resets socket deadlines
// twice per packet, which at our message rates costs a fifth of the CPU and,
// by cycling body chunks through new heap memory, evicts the signature
// matcher's tables from the CPU caches between scans. Here packets are read
// in place from one pooled buffer per connection.
package milterdoor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/pipeline"
)

// Options tune the door.
type Options struct {
	// IdleTimeout closes a milter connection on which the MTA sent nothing
	// for this long; 0 means 10 minutes.
	IdleTimeout time.Duration
	// MaxConnections bounds the milter connections open at once; 0 means
	// DefaultMaxConnections. A connection past it is closed at once (the
	// MTA then applies its milter_default_action).
	MaxConnections int
	// NegotiationTimeout bounds the wait for the MTA's first packet; 0
	// means 10 seconds.
	NegotiationTimeout time.Duration
	// LargePacketBudget bounds the bytes received and held at once, by
	// all connections, in packets larger than one read buffer (charged as
	// they arrive, not as announced); 0 means 32 MiB.
	LargePacketBudget int64
	// WatchDelay and ProgressInterval time the watch beside a slow stage
	// (see watch); 0 means watchDelay and progressInterval. Tests shorten
	// them.
	WatchDelay, ProgressInterval time.Duration
}

// DefaultMaxConnections is max_connections unless the configuration says
// otherwise: an MTA opens one milter connection per SMTP session, so this
// is the SMTP sessions in flight at once (Postfix's default process limit
// is 100 smtpd processes).
const DefaultMaxConnections = 1000

// Door serves milter connections. Its pipeline can be swapped at any time
// (a reload); an SMTP session keeps the pipeline it started with.
type Door struct {
	current atomic.Pointer[pipeline.Pipeline]
	log     *slog.Logger
	opts    Options
	// ctx is every session's base context: cancelled when the drain
	// timeout runs out, so filter calls still waiting give up.
	ctx    context.Context
	cancel context.CancelFunc

	// epoch counts the watcher's scans (see watch); it starts at 1, since
	// 0 means "no stage running".
	epoch atomic.Int64
	// idle hands a new connection to a goroutine that has served one
	// before and waits for the next (see worker).
	idle   chan *session
	budget *largeBudget
	// refusals rate-limits the log lines about refused connections.
	refusals, acceptErrors, protocolErrors logLimiter

	// beforeWatchSelect, when a test sets it, runs in a watch before it
	// waits for the stage's end or the MTA (see runWatch).
	beforeWatchSelect func(quit <-chan struct{}, gone <-chan error)

	mu        sync.Mutex
	listeners map[net.Listener]io.Closer // closes the listener and its accepter
	sessions  map[*session]struct{}
	closing   bool
	wg        sync.WaitGroup
	active    atomic.Int64
}

// New returns a door running p.
func New(p *pipeline.Pipeline, log *slog.Logger, opts Options) *Door {
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = 10 * time.Minute
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = DefaultMaxConnections
	}
	if opts.NegotiationTimeout <= 0 {
		opts.NegotiationTimeout = negotiationTimeout
	}
	if opts.LargePacketBudget <= 0 {
		opts.LargePacketBudget = 32 << 20
	}
	if opts.WatchDelay == 0 {
		opts.WatchDelay = watchDelay
	}
	if opts.ProgressInterval == 0 {
		opts.ProgressInterval = progressInterval
	}
	d := &Door{log: log, opts: opts, listeners: map[net.Listener]io.Closer{}, sessions: map[*session]struct{}{}}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.current.Store(p)
	d.epoch.Store(1)
	d.idle = make(chan *session)
	d.budget = &largeBudget{max: opts.LargePacketBudget}
	go d.watcher()
	return d
}

// SetPipeline makes p the pipeline for connections that open from now on
// (one already open stays on its own) and returns the one it replaces,
// for the caller to retire.
func (d *Door) SetPipeline(p *pipeline.Pipeline) *pipeline.Pipeline { return d.current.Swap(p) }

// Pipeline is the pipeline new connections get.
func (d *Door) Pipeline() *pipeline.Pipeline { return d.current.Load() }

// holdCurrent holds the current pipeline. A pipeline replaced and closed
// between the load and the hold cannot be held: the newer one can.
func (d *Door) holdCurrent() *pipeline.Pipeline {
	for {
		if p := d.current.Load(); p.Hold() {
			return p
		}
	}
}

// Active is the number of milter connections open now.
func (d *Door) Active() int64 { return d.active.Load() }

// Serve accepts milter connections on ln until Shutdown.
func (d *Door) Serve(ln net.Listener) error {
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		return nil
	}
	acc := newAccepter(ln)
	d.listeners[ln] = acc
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.listeners, ln)
		d.mu.Unlock()
		if r, ok := acc.(interface{ release() }); ok {
			r.release() // the listener itself stays its owner's
		}
	}()
	backoff := 5 * time.Millisecond
	for {
		c, err := acc.Accept()
		if err != nil {
			if d.shuttingDown() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err // the listener is gone: the daemon drains and stops
			}
			// Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
			// ENOMEM), an aborted handshake: wait and go on serving, as
			// net/http does.
			d.acceptErrors.log(d.log, "accept failed; retrying", "error", err.Error(), "in", backoff.String())
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		if d.active.Load() >= int64(d.opts.MaxConnections) {
			finishConn(c)
			d.refusals.log(d.log, "milter connection refused: max_connections reached", "max_connections", d.opts.MaxConnections)
			continue
		}
		s := &session{door: d, w: newWireConn(c, d.opts.IdleTimeout, d.budget)}
		if !d.track(s) {
			finishConn(c)
			s.w.release()
			continue
		}
		select {
		case d.idle <- s:
		default:
			go d.worker(s)
		}
	}
}

// accepter is what Serve accepts connections with: the listener, or its
// raw accept (see newAccepter).
type accepter interface {
	Accept() (net.Conn, error)
	Close() error
}

// workerIdle is how long a session goroutine waits for the next
// connection before it ends.
const workerIdle = 10 * time.Second

// worker serves connections one after another. Reusing the goroutine
// keeps its stack, grown once to what a session needs: a goroutine per
// connection grew (copied) its stack for every connection, which cost a
// few percent of the CPU per message when the MTA opens one connection
// per SMTP session.
func (d *Door) worker(s *session) {
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	var p workerPoller
	defer p.close()
	for {
		if err := p.attach(s.w.conn); err != nil {
			d.acceptErrors.log(d.log, "milter connection dropped: cannot wait for its packets", "error", err.Error())
			s.w.release()
			d.untrack(s)
		} else {
			s.serve()
		}
		t.Reset(workerIdle)
		select {
		case s = <-d.idle:
		case <-t.C:
			return
		case <-d.ctx.Done():
			return
		}
	}
}

func (d *Door) shuttingDown() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closing
}

func (d *Door) track(s *session) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return false
	}
	d.sessions[s] = struct{}{}
	d.wg.Add(1)
	d.active.Add(1)
	return true
}

func (d *Door) untrack(s *session) {
	d.mu.Lock()
	delete(d.sessions, s)
	d.mu.Unlock()
	d.active.Add(-1)
	d.wg.Done()
}

// stopGrace is how long Shutdown waits, after the drain timeout, for
// sessions whose filter calls were cancelled to end. A filter that
// ignores its context cannot hold the daemon past it.
const stopGrace = 2 * time.Second

// ErrSessionsLeft is Shutdown's error when sessions did not end even after
// their calls were cancelled and their connections closed.
var ErrSessionsLeft = errors.New("sessions still running after the drain timeout")

// Shutdown stops accepting connections, closes those with no message in
// flight, and waits until ctx ends for the others to finish their message.
// Then it cancels every filter call still running, closes the connections
// still open, and returns ctx's error. The drain is a hard limit: if a
// session has still not ended stopGrace later, Shutdown returns
// ErrSessionsLeft and leaves it behind.
func (d *Door) Shutdown(ctx context.Context) error {
	d.mu.Lock()
	d.closing = true
	for _, c := range d.listeners {
		c.Close()
	}
	for s := range d.sessions {
		s.drainIfIdle()
	}
	d.mu.Unlock()

	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
		d.cancel()
		return nil
	case <-ctx.Done():
	}
	d.cancel()
	d.mu.Lock()
	inFlight := len(d.sessions)
	for s := range d.sessions {
		s.w.conn.Close()
	}
	d.mu.Unlock()
	select {
	case <-done:
		return fmt.Errorf("%w: %d sessions were still in flight", ctx.Err(), inFlight)
	case <-time.After(stopGrace):
		return fmt.Errorf("%w: %d", ErrSessionsLeft, d.active.Load())
	}
}

// wantedProtocol is the set of protocol flags for a pipeline: skip every
// stage nobody reads and reply only where somebody decides. Connect, MAIL
// and RCPT are always read (they are cheap and one-way) because every
// decision's log line names the client, sender and recipients.
func wantedProtocol(reads, decides pipeline.Stage) milter.OptProtocol {
	p := milter.OptNoUnknown | milter.OptNoData | milter.OptNoUnknownReply | milter.OptNoDataReply
	for _, s := range stageFlags {
		if (reads|decides)&s.stage == 0 {
			p |= s.noSend
		}
		if decides&s.stage == 0 {
			p |= s.noReply
		}
	}
	return p
}

var stageFlags = []struct {
	stage           pipeline.Stage
	noSend, noReply milter.OptProtocol
}{
	{pipeline.StageConnect, 0, milter.OptNoConnReply},
	{pipeline.StageHelo, milter.OptNoHelo, milter.OptNoHeloReply},
	{pipeline.StageMail, 0, milter.OptNoMailReply},
	{pipeline.StageRcpt, 0, milter.OptNoRcptReply},
	{pipeline.StageHeader, milter.OptNoHeaders, milter.OptNoHeaderReply},
	{pipeline.StageEndOfHeaders, milter.OptNoEOH, milter.OptNoEOHReply},
	{pipeline.StageBody, milter.OptNoBody, milter.OptNoBodyReply},
}

// modActions maps the changes filters may make to the milter actions
// that allow them.
var modActions = []struct {
	mod    pipeline.Modification
	action milter.OptAction
}{
	{pipeline.ModRemoveRcpt, milter.OptRemoveRcpt},
	{pipeline.ModAddHeader, milter.OptAddHeader},
	{pipeline.ModChangeHeader, milter.OptChangeHeader},
}

// wantedActions are the message changes a pipeline may ask the MTA for.
func wantedActions(p *pipeline.Pipeline) milter.OptAction {
	var a milter.OptAction
	for _, m := range modActions {
		if p.Modifies()&m.mod != 0 {
			a |= m.action
		}
	}
	return a
}

// allowedChanges maps the negotiated actions to the changes filters may make.
func allowedChanges(a milter.OptAction) pipeline.Modification {
	var mods pipeline.Modification
	for _, m := range modActions {
		if a&m.action != 0 {
			mods |= m.mod
		}
	}
	return mods
}

// compatible reports whether a connection negotiated with proto and
// actions delivers every stage p reads, lets us reply wherever p decides
// (every protocol flag we use says "do not send" or "no reply", so each
// one the connection has must be one p can live with), and allows every
// change p may make.
func compatible(proto milter.OptProtocol, actions milter.OptAction, p *pipeline.Pipeline) bool {
	return proto&^wantedProtocol(p.Stages()) == 0 && wantedActions(p)&^actions == 0
}

// deliveredStages is what a connection negotiated with proto passes on.
func deliveredStages(proto milter.OptProtocol) pipeline.Stage {
	d := pipeline.AllStages
	for _, s := range stageFlags {
		if s.noSend != 0 && proto&s.noSend != 0 {
			d &^= s.stage
		}
	}
	return d
}
