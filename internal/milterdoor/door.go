// Package milterdoor is the milter front door: it speaks the milter protocol
// (v6, through github.com/d--j/go-milter) with Postfix or Sendmail and drives
// the pipeline with what the MTA sends.
//
// It asks the MTA only for the stages some filter reads, and negotiates the
// v6 no-reply flags for every stage at which no filter must answer at once,
// so an ordinary message costs one round trip (end of message) after option
// negotiation.
package milterdoor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
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
}

// Door serves milter connections. Its pipeline can be swapped at any time
// (a reload); a message keeps the pipeline it started with.
type Door struct {
	current atomic.Pointer[pipeline.Pipeline]
	log     *slog.Logger
	srv     *milter.Server
	active  atomic.Int64
}

// New returns a door running p.
func New(p *pipeline.Pipeline, log *slog.Logger, opts Options) *Door {
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = 10 * time.Minute
	}
	d := &Door{log: log}
	d.current.Store(p)
	d.srv = milter.NewServer(
		milter.WithDynamicMilter(d.newSession),
		milter.WithNegotiationCallback(d.negotiate),
		milter.WithReadTimeout(opts.IdleTimeout),
	)
	return d
}

// SetPipeline makes p the pipeline for messages that start from now on.
func (d *Door) SetPipeline(p *pipeline.Pipeline) { d.current.Store(p) }

// Serve accepts milter connections on ln until Shutdown or Close.
func (d *Door) Serve(ln net.Listener) error {
	err := d.srv.Serve(&bufferedListener{Listener: ln})
	if errors.Is(err, milter.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting connections and waits, until ctx ends, for the
// sessions in flight to finish. Sessions still open then are closed.
func (d *Door) Shutdown(ctx context.Context) error {
	err := d.srv.Shutdown(ctx)
	if err != nil {
		_ = d.srv.Close()
	}
	return err
}

// Active is the number of milter connections open now.
func (d *Door) Active() int64 { return d.active.Load() }

// wantedProtocol is the set of protocol flags for a pipeline: skip every
// stage nobody reads and reply only where somebody decides. Connect, MAIL
// and RCPT are always read (they are cheap, one-way) because every
// decision's log line names the client, sender and recipients.
func wantedProtocol(reads, decides pipeline.Stage) milter.OptProtocol {
	var p milter.OptProtocol = milter.OptNoUnknown | milter.OptNoData | milter.OptNoUnknownReply | milter.OptNoDataReply
	skip := []struct {
		st            pipeline.Stage
		noStage, noNR milter.OptProtocol
	}{
		{pipeline.StageConnect, 0, milter.OptNoConnReply},
		{pipeline.StageHelo, milter.OptNoHelo, milter.OptNoHeloReply},
		{pipeline.StageMail, 0, milter.OptNoMailReply},
		{pipeline.StageRcpt, 0, milter.OptNoRcptReply},
		{pipeline.StageHeader, milter.OptNoHeaders, milter.OptNoHeaderReply},
		{pipeline.StageEndOfHeaders, milter.OptNoEOH, milter.OptNoEOHReply},
		{pipeline.StageBody, milter.OptNoBody, milter.OptNoBodyReply},
	}
	for _, s := range skip {
		if (reads|decides)&s.st == 0 {
			p |= s.noStage
		}
		if decides&s.st == 0 {
			p |= s.noNR
		}
	}
	return p
}

// compatible reports whether a connection negotiated with proto delivers
// every stage p reads and lets us reply wherever p decides.
func compatible(proto milter.OptProtocol, p *pipeline.Pipeline) bool {
	// Every flag we use says "do not send" or "no reply": each one the
	// connection has must be one p can live with.
	return proto&^wantedProtocol(p.Stages()) == 0
}

func (d *Door) negotiate(mtaVersion, _ uint32, mtaActions, _ milter.OptAction, mtaProtocol, _ milter.OptProtocol, offered milter.DataSize) (uint32, milter.OptAction, milter.OptProtocol, milter.DataSize, error) {
	if mtaVersion < 2 {
		return 0, 0, 0, 0, fmt.Errorf("MTA speaks milter protocol version %d; at least 2 is needed", mtaVersion)
	}
	version := min(mtaVersion, milter.MaxServerProtocolVersion)
	reads, decides := d.current.Load().Stages()
	// Ask only for what the MTA offers; where it cannot spare us a reply,
	// the library sends ours.
	proto := wantedProtocol(reads, decides) & mtaProtocol
	_ = mtaActions // no filter modifies messages yet
	return version, 0, proto, offered, nil
}

func (d *Door) newSession(_ uint32, _ milter.OptAction, proto milter.OptProtocol, _ milter.DataSize) milter.Milter {
	return &session{door: d, proto: proto}
}
