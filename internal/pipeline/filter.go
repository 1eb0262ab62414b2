// Package pipeline runs the configured filters, in order, over the stages of
// an SMTP transaction, and turns their answers into one verdict. Every front
// door (the milter, the offline scanner) drives the same pipeline.
package pipeline

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"mailguard/internal/stats"
	"mailguard/internal/verdict"
)

// Stage is a set of SMTP transaction stages.
type Stage uint16

const (
	StageConnect Stage = 1 << iota
	StageHelo
	StageMail
	StageRcpt
	StageHeader
	StageEndOfHeaders
	StageBody
	StageEndOfMessage
)

// Conn describes the SMTP client of a session.
type Conn struct {
	Hostname string // as the MTA resolved it, or "[addr]"
	Addr     string // IP address, empty if unknown
	Helo     string
}

// Envelope is what is known about the message so far.
type Envelope struct {
	Conn     *Conn
	From     string   // envelope sender without <>; "" is the null sender
	FromArgs string   // ESMTP parameters of MAIL FROM, such as "SIZE=1234"
	Rcpts    []string // recipients accepted so far, less those removed
	QueueID  string   // the MTA's queue id, when it has told us
	// Delivered is the set of stages the front door passes on for this
	// message (a milter connection negotiated without bodies has no body).
	Delivered Stage
	// Final is the message's verdict once a filter has decided it.
	Final verdict.Verdict
	// Removed lists recipients a filter took off the message.
	Removed []Removal
}

// Removal is a recipient taken off a message, and why.
type Removal struct {
	Rcpt, Filter, Reason string
}

// RemoveRcpt takes a recipient off the message; the front door tells the
// MTA (milter delete-recipient) if the message is delivered.
func (e *Envelope) RemoveRcpt(rcpt, filter, reason string) {
	for i, r := range e.Rcpts {
		if r == rcpt {
			e.Rcpts = append(e.Rcpts[:i:i], e.Rcpts[i+1:]...)
			e.Removed = append(e.Removed, Removal{Rcpt: rcpt, Filter: filter, Reason: reason})
			return
		}
	}
}

// AllStages is every stage, as an offline front door delivers them.
const AllStages = StageConnect | StageHelo | StageMail | StageRcpt | StageHeader | StageEndOfHeaders | StageBody | StageEndOfMessage

// Filter is one configured filter. It is immutable and shared by all
// sessions; per-message state lives in the Check it creates.
type Filter interface {
	// Name is the filter's configuration name, used in logs.
	Name() string
	// Stages returns the stages whose data the filter reads, and the
	// stages at which its verdict must reach the MTA at once (a verdict
	// given at another stage is held until the next stage that replies).
	Stages() (reads, decides Stage)
	// NewCheck starts the filter's work on one message.
	NewCheck(env *Envelope) (Check, error)
}

// Check is a filter's state for one message. The pipeline calls only the
// methods of the stages the filter reads, and always calls Close. Embed
// NopCheck to implement only the stages you need.
type Check interface {
	MailFrom(env *Envelope) (verdict.Verdict, error)
	Rcpt(env *Envelope, rcpt, args string) (verdict.Verdict, error)
	Header(name, value string) (verdict.Verdict, error)
	EndOfHeaders(env *Envelope) (verdict.Verdict, error)
	Body(chunk []byte) (verdict.Verdict, error)
	EndOfMessage(env *Envelope) (verdict.Verdict, error)
	Close()
}

// Observer is implemented by filters that must see every stage of a
// message even after another filter decided it, such as a copy of the mail
// stream. Their verdicts are ignored.
type Observer interface {
	Observer()
}

// Modification is a set of changes to a message a filter may ask for.
type Modification uint8

const (
	// ModRemoveRcpt: take recipients off the message (Envelope.RemoveRcpt).
	ModRemoveRcpt Modification = 1 << iota
)

// Modifier is implemented by filters that change messages.
type Modifier interface {
	Modifies() Modification
}

// ConnFilter is implemented by filters that judge the connection itself
// (client address, HELO) before any message.
type ConnFilter interface {
	Connect(c *Conn) (verdict.Verdict, error)
	Helo(c *Conn) (verdict.Verdict, error)
}

// NopCheck answers Pass at every stage.
type NopCheck struct{}

func (NopCheck) MailFrom(*Envelope) (verdict.Verdict, error)             { return verdict.Pass, nil }
func (NopCheck) Rcpt(*Envelope, string, string) (verdict.Verdict, error) { return verdict.Pass, nil }
func (NopCheck) Header(string, string) (verdict.Verdict, error)          { return verdict.Pass, nil }
func (NopCheck) EndOfHeaders(*Envelope) (verdict.Verdict, error)         { return verdict.Pass, nil }
func (NopCheck) Body([]byte) (verdict.Verdict, error)                    { return verdict.Pass, nil }
func (NopCheck) EndOfMessage(*Envelope) (verdict.Verdict, error)         { return verdict.Pass, nil }
func (NopCheck) Close()                                                  {}

// ErrorPolicy is what a filter's failure (an error or a panic) means for
// the message.
type ErrorPolicy uint8

const (
	// OnErrorTempFail refuses with 451 4.3.0 so the sender retries later.
	OnErrorTempFail ErrorPolicy = iota
	// OnErrorAccept ignores the filter for the rest of the message.
	OnErrorAccept
	// OnErrorReject refuses permanently with 550 5.7.1.
	OnErrorReject
)

// ParseErrorPolicy reads "tempfail", "accept" or "reject".
func ParseErrorPolicy(s string) (ErrorPolicy, error) {
	switch strings.ToLower(s) {
	case "tempfail":
		return OnErrorTempFail, nil
	case "accept":
		return OnErrorAccept, nil
	case "reject":
		return OnErrorReject, nil
	}
	return 0, fmt.Errorf("on_error %q: want tempfail, accept or reject", s)
}

func (p ErrorPolicy) String() string {
	return [...]string{"tempfail", "accept", "reject"}[p]
}

// verdictFor is the verdict a failed filter's policy gives. The text is
// generic: the real error goes to the log, never to the client.
func (p ErrorPolicy) verdictFor(filter string) verdict.Verdict {
	var v verdict.Verdict
	switch p {
	case OnErrorTempFail:
		v = verdict.TempFailf(verdict.CodeLocalError, verdict.EnhSystemTemp, "Temporary failure, try again later")
	case OnErrorReject:
		v = verdict.Rejectf(verdict.CodeMailboxUnavailable, verdict.EnhDeliveryNotAuthorized, "Message refused")
	default:
		return verdict.Pass
	}
	v.Filter, v.Reason = filter, "error"
	return v
}

// Env is what filters and the pipeline share with the rest of the daemon.
type Env struct {
	Log   *slog.Logger
	Stats *stats.Counter
	Now   func() time.Time
}
