package milterdoor

import (
	"github.com/d--j/go-milter"

	"mailguard/internal/pipeline"
	"mailguard/internal/verdict"
)

// session is one milter connection, which the MTA uses for one SMTP session
// (and may reuse for the next). It is used by one goroutine at a time.
type session struct {
	door  *Door
	proto milter.OptProtocol
	pipe  *pipeline.Pipeline // pipeline of the connection stages
	conn  pipeline.Conn
	msg   *pipeline.Message
}

// pipeline returns the newest pipeline this connection can serve: one whose
// stages the negotiated protocol delivers. An older connection keeps its
// pipeline when a reload needs more than it negotiated.
func (s *session) pipeline() *pipeline.Pipeline {
	if p := s.door.current.Load(); s.pipe == nil || compatible(s.proto, p) {
		s.pipe = p
	}
	return s.pipe
}

func (s *session) endMessage() {
	if s.msg != nil {
		s.msg.Close()
		s.msg = nil
	}
}

func (s *session) NewConnection(milter.Modifier) error {
	s.endMessage()
	s.conn = pipeline.Conn{}
	s.door.active.Add(1)
	return nil
}

func (s *session) Connect(host, _ string, _ uint16, addr string, _ milter.Modifier) (*milter.Response, error) {
	s.conn = pipeline.Conn{Hostname: host, Addr: addr}
	return response(s.pipeline().Connect(&s.conn)), nil
}

func (s *session) Helo(name string, _ milter.Modifier) (*milter.Response, error) {
	s.conn.Helo = name
	return response(s.pipeline().Helo(&s.conn)), nil
}

func (s *session) MailFrom(from, args string, _ milter.Modifier) (*milter.Response, error) {
	s.endMessage()
	var v verdict.Verdict
	s.msg, v = s.pipeline().Begin(&s.conn, from, args)
	return response(v), nil
}

func (s *session) RcptTo(rcpt, args string, m milter.Modifier) (*milter.Response, error) {
	if s.msg == nil {
		return milter.RespContinue, nil
	}
	s.msg.SetQueueID(m.Get(milter.MacroQueueId))
	return response(s.msg.Rcpt(rcpt, args)), nil
}

func (s *session) Data(milter.Modifier) (*milter.Response, error) {
	return milter.RespContinue, nil
}

func (s *session) Header(name, value string, _ milter.Modifier) (*milter.Response, error) {
	if s.msg == nil {
		return milter.RespContinue, nil
	}
	return response(s.msg.Header(name, value)), nil
}

func (s *session) Headers(milter.Modifier) (*milter.Response, error) {
	if s.msg == nil {
		return milter.RespContinue, nil
	}
	return response(s.msg.EndOfHeaders()), nil
}

func (s *session) BodyChunk(chunk []byte, _ milter.Modifier) (*milter.Response, error) {
	if s.msg == nil {
		return milter.RespContinue, nil
	}
	return response(s.msg.Body(chunk)), nil
}

func (s *session) EndOfMessage(m milter.Modifier) (*milter.Response, error) {
	if s.msg == nil {
		return milter.RespAccept, nil
	}
	s.msg.SetQueueID(m.Get(milter.MacroQueueId))
	v := s.msg.End()
	s.endMessage()
	if !v.Final() {
		return milter.RespAccept, nil
	}
	return response(v), nil
}

func (s *session) Abort(milter.Modifier) error {
	s.endMessage()
	return nil
}

func (s *session) Unknown(string, milter.Modifier) (*milter.Response, error) {
	return milter.RespContinue, nil
}

func (s *session) Cleanup(milter.Modifier) {
	s.endMessage()
	s.door.active.Add(-1)
}
