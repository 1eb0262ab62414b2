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
	delivered pipeline.Stage
	pipe      *pipeline.Pipeline // pipeline of the connection stages
	conn      pipeline.Conn
	msg       *pipeline.Message
	queueID   string // the MTA's "i" macro, until the message ends
	inMessage atomic.Bool
}

func (s *session) serve() {
	defer s.door.untrack(s)
	defer func() {
		if r := recover(); r != nil {
			s.door.log.Error("milter session panicked; connection closed", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
		s.endMessage()
		s.w.conn.Close()
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
		if done || !s.inMessage.Load() && s.door.shuttingDown() {
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
		s.door.log.Info("milter connection idle too long; closed", "client", s.conn.Addr)
		return
	}
	s.door.log.Warn(msg, "error", err.Error(), "client", s.conn.Addr)
}

func (s *session) negotiate() error {
	s.w.conn.SetReadDeadline(time.Now().Add(negotiationTimeout))
	cmd, data, err := s.w.readPacket()
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
	s.pipe = s.door.current.Load()
	// Ask only for flags the MTA offers; where it cannot spare us a reply,
	// we send one.
	s.proto = wantedProtocol(s.pipe.Stages()) & mtaProto
	s.delivered = deliveredStages(s.proto)
	s.actions = wantedActions(s.pipe) & mtaActions
	if missing := wantedActions(s.pipe) &^ s.actions; missing != 0 {
		s.door.log.Warn("MTA does not allow message changes a filter needs; recipients will not be removed", "missing", missing.String())
	}
	var out [12]byte
	binary.BigEndian.PutUint32(out[0:], version)
	binary.BigEndian.PutUint32(out[4:], uint32(s.actions))
	binary.BigEndian.PutUint32(out[8:], uint32(s.proto))
	s.w.deadlineSet = time.Time{}
	return s.w.writePacket(cmdOptNeg, out[:])
}

// pipeline returns the newest pipeline this connection can serve: one whose
// stages the negotiated protocol delivers. An older connection keeps its
// pipeline when a reload needs more than it negotiated.
func (s *session) pipeline() *pipeline.Pipeline {
	if p := s.door.current.Load(); compatible(s.proto, s.actions, p) {
		s.pipe = p
	}
	return s.pipe
}

func (s *session) endMessage() {
	if s.msg != nil {
		s.msg.Close()
		s.msg = nil
	}
	s.queueID = ""
	s.inMessage.Store(false)
}

// dispatch handles one command. done reports the end of the connection.
func (s *session) dispatch(cmd byte, data []byte) (done bool, err error) {
	switch cmd {
	case cmdMacro:
		if len(data) > 0 {
			if id, ok := queueIDFromMacros(data[1:]); ok {
				s.queueID = id
			}
		}
		return false, nil
	case cmdConnect:
		if err := s.parseConnect(data); err != nil {
			return false, err
		}
		return false, s.reply(cmdConnect, s.pipeline().Connect(&s.conn))
	case cmdHelo:
		s.conn.Helo, _ = cString(data)
		return false, s.reply(cmdHelo, s.pipeline().Helo(&s.conn))
	case cmdMail:
		// The macros for this MAIL came just before it: Sendmail sends the
		// queue id with them, so it must survive the end of the previous
		// message.
		id := s.queueID
		s.endMessage()
		s.queueID = id
		args := cStrings(data)
		if len(args) == 0 {
			return false, errors.New("MAIL without a sender")
		}
		s.inMessage.Store(true)
		var v verdict.Verdict
		s.msg, v = s.pipeline().Begin(&s.conn, s.delivered, trimAngles(args[0]), strings.Join(args[1:], " "))
		s.msg.SetQueueID(s.queueID)
		return false, s.reply(cmdMail, v)
	case cmdRcpt:
		args := cStrings(data)
		if s.msg == nil || len(args) == 0 {
			return false, s.reply(cmdRcpt, verdict.Pass)
		}
		s.msg.SetQueueID(s.queueID)
		return false, s.reply(cmdRcpt, s.msg.Rcpt(trimAngles(args[0]), strings.Join(args[1:], " ")))
	case cmdData:
		return false, s.reply(cmdData, verdict.Pass)
	case cmdHeader:
		name, rest := cString(data)
		value, _ := cString(rest)
		v := verdict.Pass
		if s.msg != nil {
			v = s.msg.Header(name, value)
		}
		return false, s.reply(cmdHeader, v)
	case cmdEOH:
		v := verdict.Pass
		if s.msg != nil {
			v = s.msg.EndOfHeaders()
		}
		return false, s.reply(cmdEOH, v)
	case cmdBody:
		v := verdict.Pass
		if s.msg != nil {
			v = s.msg.Body(data)
		}
		return false, s.reply(cmdBody, v)
	case cmdEOB:
		return false, s.endOfMessage(data)
	case cmdAbort:
		s.endMessage()
		return false, nil
	case cmdQuitNewConn:
		s.endMessage()
		s.conn = pipeline.Conn{}
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

func (s *session) endOfMessage(data []byte) error {
	if s.msg == nil {
		return s.w.writePacket(replyAccept, nil)
	}
	if len(data) > 0 { // a last body chunk may ride on the end-of-body packet
		s.msg.Body(data)
	}
	s.msg.SetQueueID(s.queueID)
	v := s.msg.End()
	removed := s.msg.Envelope().Removed
	s.endMessage()
	if !v.Final() {
		if s.actions&milter.OptRemoveRcpt != 0 {
			for _, r := range removed {
				if err := s.w.writePacket(modDeleteRcpt, append([]byte("<"+r.Rcpt+">"), 0)); err != nil {
					return err
				}
			}
		}
		return s.w.writePacket(replyAccept, nil)
	}
	code, payload := reply(v)
	return s.w.writePacket(code, payload)
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
	s.conn = pipeline.Conn{Hostname: host}
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
		addr, _ := cString(rest[2:])
		if family == '6' {
			addr = strings.TrimPrefix(addr, "IPv6:")
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
