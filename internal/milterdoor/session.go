package milterdoor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/pipeline"
	"mailguard/internal/verdict"
)

// negotiationTimeout bounds the wait for the MTA's first packet.
const negotiationTimeout = 10 * time.Second

// session is one milter connection, which the MTA uses for one SMTP session
// (and may reuse for the next). One goroutine serves it.
type session struct {
	door      *Door
	w         *wireConn
	proto     milter.OptProtocol
	actions   milter.OptAction
	macroReq  map[milter.MacroStage]string // the macro lists negotiated; nil: the MTA's defaults
	delivered pipeline.Stage
	pipe      *pipeline.Pipeline   // the pipeline negotiated for, or the newest since; held
	cn        *pipeline.Connection // the pipeline's connection state, from connect on
	conn      pipeline.Conn
	macros    macroStore
	msg       *pipeline.Message
	phase     phase // how far the message has come
	state     atomic.Int32
	watch     watch
}

// A session's state, which the drain and the session change atomically:
// either the session begins a message first, and the drain lets it
// finish, or the drain closes the idle connection first, and the session
// begins no message on it, even one whose MAIL it had already read.
const (
	stateIdle      int32 = iota // between messages
	stateInMessage              // from MAIL to the end of the message
	stateDrained                // closed by the drain while idle
)

// inMessage reports whether a message is under way.
func (s *session) inMessage() bool { return s.state.Load() == stateInMessage }

// drainIfIdle closes the connection if no message is under way and
// reports whether it did.
func (s *session) drainIfIdle() bool {
	if !s.state.CompareAndSwap(stateIdle, stateDrained) {
		return false
	}
	s.w.conn.Close()
	return true
}

func (s *session) serve() {
	defer s.door.untrack(s)
	defer func() {
		if r := recover(); r != nil {
			s.door.log.Error("milter session panicked; connection closed", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
		s.stopWatch() // after a panic in a stage: its watch reads the socket
		s.endMessage()
		s.closeConnection()
		if s.pipe != nil {
			s.pipe.Release()
		}
		finishConn(s.w.conn)
		s.w.release()
	}()
	if err := s.negotiate(); err != nil {
		s.logError("milter negotiation failed", err)
		return
	}
	for {
		cmd, data, err := s.w.readPacket()
		if err != nil {
			s.logError("milter connection ended", err)
			return
		}
		done, err := s.dispatch(cmd, data)
		if err != nil {
			s.logError("milter protocol error; connection closed", err)
			return
		}
		if cmd == cmdEOB || cmd == cmdAbort {
			s.w.releaseIdle() // between messages: see releaseIdle
		}
		if done || !s.inMessage() && s.door.shuttingDown() {
			return
		}
	}
}

// logError logs what ended a connection, unless it ended the normal way.
func (s *session) logError(msg string, err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s.door.log.Info("milter connection idle too long; closed", "client", pipeline.LogField(s.conn.Addr))
		return
	}
	s.door.protocolErrors.log(s.door.log, msg, "error", err.Error(), "client", pipeline.LogField(s.conn.Addr))
}

func (s *session) negotiate() error {
	cmd, data, err := s.w.negotiationPacket(s.door.opts.NegotiationTimeout)
	if err != nil {
		return err
	}
	if cmd != cmdOptNeg || len(data) < 12 {
		return fmt.Errorf("expected option negotiation, got command %q with %d bytes", cmd, len(data))
	}
	version := binary.BigEndian.Uint32(data[0:])
	mtaActions := milter.OptAction(binary.BigEndian.Uint32(data[4:]))
	mtaProto := milter.OptProtocol(binary.BigEndian.Uint32(data[8:]))
	if version < 2 {
		return fmt.Errorf("MTA speaks milter protocol version %d; at least 2 is needed", version)
	}
	version = min(version, 6)
	s.pipe = s.door.holdCurrent()
	// Ask only for flags the MTA offers; where it cannot spare us a reply,
	// we send one.
	s.proto = wantedProtocol(s.pipe.Stages()) & mtaProto
	s.delivered = deliveredStages(s.proto)
	s.actions = wantedActions(s.pipe) & mtaActions
	if missing := wantedActions(s.pipe) &^ s.actions; missing != 0 {
		s.door.log.Warn("MTA does not allow message changes a filter needs; they will not be made", "missing", missing.String())
	}
	var buf [256]byte // the reply, macro lists included, without a heap allocation
	out := buf[:12]
	if req := macroRequest(s.pipe); req != nil && version >= 6 && mtaActions&milter.OptSetMacros != 0 {
		s.macroReq = req
		s.actions |= milter.OptSetMacros
		for _, ms := range macroStages {
			out = binary.BigEndian.AppendUint32(out, uint32(ms.slot))
			out = append(append(out, req[ms.slot]...), 0)
		}
	}
	binary.BigEndian.PutUint32(out[0:], version)
	binary.BigEndian.PutUint32(out[4:], uint32(s.actions))
	binary.BigEndian.PutUint32(out[8:], uint32(s.proto))
	s.w.deadlineSet = time.Time{}
	s.conn.Macros = &s.macros
	return s.w.writePacket(cmdOptNeg, out)
}

// openConnection starts the pipeline's connection state (an SMTP
// session), on the newest pipeline this connection can serve: one whose
// stages, changes and macros the negotiation covers. A connection keeps
// an older pipeline when a reload needs more than it negotiated.
func (s *session) openConnection() {
	if p := s.door.current.Load(); p != s.pipe && s.canServe(p) && p.Hold() {
		s.pipe.Release()
		s.pipe = p
	}
	s.cn = s.pipe.Open(s.door.ctx, &s.conn)
}

// canServe reports whether this connection's negotiation covers p.
func (s *session) canServe(p *pipeline.Pipeline) bool {
	return compatible(s.proto, s.actions, p) && macrosCovered(s.macroReq, p)
}

func (s *session) closeConnection() {
	if s.cn != nil {
		s.cn.Close()
		s.cn = nil
	}
}

// connection returns the connection state for a new message. A reload
// does not move an SMTP session to the new pipeline: what its filters
// learnt at connect and HELO (the client's address, a concurrency slot,
// the MTA listener that took it) stays with it until it ends, and the
// old pipeline is closed after its last session.
func (s *session) connection() *pipeline.Connection {
	if s.cn == nil {
		s.openConnection()
	}
	return s.cn
}

func (s *session) endMessage() {
	if s.msg != nil {
		s.msg.Close()
		s.msg = nil
	}
	s.phase = phaseNone
	s.state.CompareAndSwap(stateInMessage, stateIdle)
}

// phase is how far a message has come. An MTA sends a message's commands
// in one order (the envelope, DATA, the header fields, their end, the
// body), each stage once.
type phase uint8

const (
	phaseNone     phase = iota // no message
	phaseEnvelope              // MAIL and RCPT
	phaseData                  // DATA
	phaseHeaders               // header fields
	phaseBody                  // after the end of the headers: the body
)

var phaseNames = [...]string{"", "envelope", "DATA", "header fields", "body"}

// advance moves the message to phase p, or says why the command cannot
// come now: a command of an earlier phase, or the end of the headers
// twice. A peer that sends either is no MTA (Postfix and Sendmail never
// do) but a broken or hostile local process; running the stage again
// would call the filters twice for one message (a second clamd stream,
// a slot never given back), and guessing what it meant would let it
// steer the filters, so the connection is closed: the message is
// released at once, and a real MTA applies its milter_default_action.
// Without a message (no MAIL yet, or after its end) there is nothing to
// protect and the command gets its usual answer.
func (s *session) advance(cmd byte, p phase) error {
	if s.phase == phaseNone {
		return nil
	}
	if s.phase > p || cmd == cmdEOH && s.phase == phaseBody {
		return fmt.Errorf("command %q after the message's %s", cmd, phaseNames[s.phase])
	}
	s.phase = p
	return nil
}

// dispatch handles one command. done reports the end of the connection.
func (s *session) dispatch(cmd byte, data []byte) (done bool, err error) {
	switch cmd {
	case cmdMacro:
		if len(data) > 0 {
			s.macros.set(data[0], data[1:])
		}
		return false, nil
	case cmdConnect:
		if err := s.parseConnect(data); err != nil {
			return false, err
		}
		s.closeConnection()
		s.openConnection()
		return false, s.guardedReply(cmdConnect, s.cn.Connect)
	case cmdHelo:
		s.conn.Helo, _ = cString(data)
		return false, s.guardedReply(cmdHelo, s.connection().Helo)
	case cmdMail:
		s.endMessage() // a MAIL without the end of the previous message
		args := cStrings(data)
		if len(args) == 0 {
			return false, errors.New("MAIL without a sender")
		}
		if !s.state.CompareAndSwap(stateIdle, stateInMessage) {
			return true, nil // the drain closed the connection: no new message
		}
		s.phase = phaseEnvelope
		cn := s.connection()
		return false, s.guardedReply(cmdMail, func() verdict.Verdict {
			var v verdict.Verdict
			s.msg, v = cn.Begin(s.delivered, allowedChanges(s.actions), trimAngles(args[0]), strings.Join(args[1:], " "))
			s.msg.SetQueueID(s.macro("i"))
			return v
		})
	case cmdRcpt:
		if err := s.advance(cmd, phaseEnvelope); err != nil {
			return false, err
		}
		args := cStrings(data)
		if s.msg == nil || len(args) == 0 {
			return false, s.reply(cmdRcpt, verdict.Pass)
		}
		s.msg.SetQueueID(s.macro("i"))
		return false, s.guardedReply(cmdRcpt, func() verdict.Verdict {
			return s.msg.Rcpt(trimAngles(args[0]), strings.Join(args[1:], " "))
		})
	case cmdData:
		if err := s.advance(cmd, phaseData); err != nil {
			return false, err
		}
		// Postfix assigns the queue id once a recipient is accepted and
		// sends it with the DATA macros: the headers (and a capture copy's
		// X-Envelope-Queue-ID) should have it.
		if s.msg != nil && s.msg.Envelope().QueueID == "" {
			s.msg.SetQueueID(s.macro("i"))
		}
		return false, s.reply(cmdData, verdict.Pass)
	case cmdHeader:
		if err := s.advance(cmd, phaseHeaders); err != nil {
			return false, err
		}
		name, rest := cString(data)
		value, _ := cString(rest)
		if s.msg == nil {
			return false, s.reply(cmdHeader, verdict.Pass)
		}
		if s.msg.Envelope().QueueID == "" {
			s.msg.SetQueueID(s.macro("i"))
		}
		return false, s.guardedReply(cmdHeader, func() verdict.Verdict { return s.msg.Header(name, value) })
	case cmdEOH:
		if err := s.advance(cmd, phaseBody); err != nil {
			return false, err
		}
		if s.msg == nil {
			return false, s.reply(cmdEOH, verdict.Pass)
		}
		return false, s.guardedReply(cmdEOH, s.msg.EndOfHeaders)
	case cmdBody:
		if err := s.advance(cmd, phaseBody); err != nil {
			return false, err
		}
		if s.msg == nil {
			return false, s.reply(cmdBody, verdict.Pass)
		}
		return false, s.guardedReply(cmdBody, func() verdict.Verdict { return s.msg.Body(data) })
	case cmdEOB:
		return false, s.endOfMessage(data)
	case cmdAbort:
		s.endMessage()
		s.macros.clearFrom(int(milter.StageMail))
		return false, nil
	case cmdQuitNewConn:
		s.endMessage()
		s.closeConnection()
		s.macros.clearFrom(int(milter.StageConnect))
		s.conn = pipeline.Conn{Macros: &s.macros}
		return false, nil
	case cmdQuit:
		return true, nil
	case cmdUnknown:
		return false, s.reply(cmdUnknown, verdict.Pass)
	case cmdOptNeg:
		return false, errors.New("option negotiation repeated")
	}
	return false, fmt.Errorf("unknown milter command %q", cmd)
}

func (s *session) macro(name string) string {
	v, _ := s.macros.Macro(name)
	return v
}

func (s *session) endOfMessage(data []byte) error {
	if s.msg == nil {
		return s.w.writePacket(replyAccept, nil)
	}
	msg := s.msg
	// The message ends once its answer is written: until then a drain
	// must not take the session for idle and close the connection under
	// the answer.
	defer s.endMessage()
	v := s.guarded(true, func() verdict.Verdict {
		if len(data) > 0 { // a last body chunk may ride on the end-of-body packet
			msg.Body(data)
		}
		msg.SetQueueID(s.macro("i"))
		return msg.End()
	})
	env := msg.Envelope()
	removed, headers := env.Removed, env.Headers()
	s.macros.clearFrom(int(milter.StageMail))
	if v.Final() {
		code, payload := reply(v)
		return s.w.writePacket(code, payload)
	}
	if s.actions&milter.OptRemoveRcpt != 0 {
		for _, r := range removed {
			if err := s.w.writePacket(modDeleteRcpt, append([]byte("<"+r.Rcpt+">"), 0)); err != nil {
				return err
			}
		}
	}
	for _, h := range headers {
		if code, payload, ok := headerPacket(h, s.actions); ok {
			if err := s.w.writePacket(code, payload); err != nil {
				return err
			}
		}
	}
	return s.w.writePacket(replyAccept, nil)
}

// headerPacket encodes a header change, if the MTA allows it.
func headerPacket(h pipeline.HeaderChange, actions milter.OptAction) (byte, []byte, bool) {
	var b []byte
	switch h.Op {
	case pipeline.HeaderAdd:
		if actions&milter.OptAddHeader == 0 {
			return 0, nil, false
		}
		return modAddHeader, append(append(append(append(b, h.Name...), 0), h.Value...), 0), true
	case pipeline.HeaderInsert:
		if actions&milter.OptAddHeader == 0 {
			return 0, nil, false
		}
		b = binary.BigEndian.AppendUint32(b, uint32(h.Index))
		return modInsertHeader, append(append(append(append(b, h.Name...), 0), h.Value...), 0), true
	case pipeline.HeaderReplace:
		if actions&milter.OptChangeHeader == 0 {
			return 0, nil, false
		}
		b = binary.BigEndian.AppendUint32(b, uint32(h.Index))
		return modChangeHeader, append(append(append(append(b, h.Name...), 0), h.Value...), 0), true
	}
	return 0, nil, false
}

// guardedReply runs a stage and answers it. Where the MTA waits for the
// answer, the call is watched (see guarded).
func (s *session) guardedReply(cmd byte, stage func() verdict.Verdict) error {
	if s.proto&noReplyFlag(cmd) != 0 {
		s.unanswered(stage) // the verdict, if any, is held for a later stage
		return nil
	}
	return s.reply(cmd, s.guarded(false, stage))
}

// reply answers a stage, unless the connection negotiated that the stage
// gets no reply (a verdict there is then held for a later stage).
func (s *session) reply(cmd byte, v verdict.Verdict) error {
	if s.proto&noReplyFlag(cmd) != 0 {
		return nil
	}
	code, payload := reply(v)
	return s.w.writePacket(code, payload)
}

func noReplyFlag(cmd byte) milter.OptProtocol {
	switch cmd {
	case cmdConnect:
		return milter.OptNoConnReply
	case cmdHelo:
		return milter.OptNoHeloReply
	case cmdMail:
		return milter.OptNoMailReply
	case cmdRcpt:
		return milter.OptNoRcptReply
	case cmdData:
		return milter.OptNoDataReply
	case cmdHeader:
		return milter.OptNoHeaderReply
	case cmdEOH:
		return milter.OptNoEOHReply
	case cmdBody:
		return milter.OptNoBodyReply
	case cmdUnknown:
		return milter.OptNoUnknownReply
	}
	return 0
}

// parseConnect reads "hostname\0 family [port address\0]".
func (s *session) parseConnect(data []byte) error {
	host, rest := cString(data)
	s.conn = pipeline.Conn{Hostname: host, Macros: &s.macros}
	if len(rest) == 0 {
		return errors.New("connect packet without address family")
	}
	family := rest[0]
	rest = rest[1:]
	switch family {
	case 'U': // unknown: no address
		return nil
	case '4', '6', 'L':
		if len(rest) < 2 {
			return errors.New("connect packet too short for a port")
		}
		s.conn.Port = int(binary.BigEndian.Uint16(rest))
		addr, _ := cString(rest[2:])
		switch family {
		case '4':
			s.conn.Family = pipeline.FamilyInet
		case '6':
			s.conn.Family = pipeline.FamilyInet6
			addr = strings.TrimPrefix(addr, "IPv6:")
		case 'L':
			s.conn.Family = pipeline.FamilyUnix
		}
		s.conn.Addr = addr
		return nil
	}
	return fmt.Errorf("connect packet with unknown address family %q", family)
}

func trimAngles(a string) string {
	if len(a) >= 2 && a[0] == '<' && a[len(a)-1] == '>' {
		return a[1 : len(a)-1]
	}
	return a
}
