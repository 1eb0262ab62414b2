// Package pipeline runs the configured filters, in order, over the stages of
// an SMTP transaction, and turns their answers into one verdict. Every front
// door (the milter, the offline scanner) drives the same pipeline.
package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"mailguard/internal/metrics"
	"mailguard/internal/oneline"
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

// Family is how the SMTP client reached the MTA.
type Family string

const (
	FamilyUnknown Family = ""
	FamilyInet    Family = "inet"
	FamilyInet6   Family = "inet6"
	FamilyUnix    Family = "unix"
)

// Conn describes the SMTP client of a session.
type Conn struct {
	Hostname string // as the MTA resolved it, or "[addr]"
	Addr     string // IP address (or socket path), empty if unknown
	Port     int    // client port, 0 if unknown
	Family   Family
	Helo     string
	// Macros are the MTA's macros as they stand at the current stage
	// (libmilter's lifetimes: the connect macros for the connection, the
	// MAIL macros for the message, ...); nil when the front door has none.
	Macros Macros
}

// Macros looks up the MTA's macros by name: "j", "{auth_authen}" or
// "auth_authen" (the braces are optional).
type Macros interface {
	Macro(name string) (value string, ok bool)
}

// Macro returns a macro's value, or "" if the MTA did not send it.
func (c *Conn) Macro(name string) string {
	if c == nil || c.Macros == nil {
		return ""
	}
	v, _ := c.Macros.Macro(name)
	return v
}

// MacroUser is implemented by filters that read macros: the front door
// asks the MTA for them at negotiation (milter protocol v6 macro lists).
type MacroUser interface {
	// Macros returns the macro names the filter reads, by the stage at
	// which the MTA should send them (StageConnect, StageHelo, StageMail,
	// StageRcpt, StageEndOfHeaders, StageEndOfMessage).
	Macros() map[Stage][]string
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
	// Allowed is the set of changes the MTA lets us make to this message.
	Allowed Modification
	// Removed lists recipients a filter took off the message (with
	// RemoveRcpt; read-only for filters).
	Removed []Removal

	// What the filters decided, changed and would have done, written only
	// through the pipeline (decisions, the header methods), which applies
	// monitor mode and the bounds; read with the methods of the same
	// names.
	final     verdict.Verdict
	headers   []HeaderChange
	monitored []MonitorHit

	caller *Member     // the filter being called, for RemoveRcpt and header changes
	conn   *Connection // for ConnState
	// headerFields counts the fields the message came with; deletions
	// and additions the header changes recorded; dropped those dropped.
	headerFields, deletions, additions int
	dropped, monitorDropped            []droppedChange
}

// Final is the message's verdict once a filter has decided it.
func (e *Envelope) Final() verdict.Verdict { return e.final }

// Headers lists the header changes filters asked for, in order: the
// changes to make to a delivered message, X-Mailguard records of
// monitor-mode filters among them once the message has ended.
func (e *Envelope) Headers() []HeaderChange { return slices.Clone(e.headers) }

// Monitored lists what filters in monitor mode would have done.
func (e *Envelope) Monitored() []MonitorHit { return slices.Clone(e.monitored) }

// Macro returns one of the MTA's macros, or "".
func (e *Envelope) Macro(name string) string { return e.Conn.Macro(name) }

// Removal is a recipient taken off a message, and why.
type Removal struct {
	Rcpt, Filter, Reason string
}

// RemoveRcpt takes a recipient off the message; the front door tells the
// MTA (milter delete-recipient) if the message is delivered. Called by a
// filter in monitor mode, it only records that the filter would have.
func (e *Envelope) RemoveRcpt(rcpt, reason string) {
	filter := e.callerName()
	if e.caller != nil && e.caller.Mode == Monitor {
		e.monitor(MonitorHit{Filter: filter, Action: "remove recipient", Rcpt: rcpt, Reason: reason})
		return
	}
	for i, r := range e.Rcpts {
		if r == rcpt {
			e.Rcpts = append(e.Rcpts[:i:i], e.Rcpts[i+1:]...)
			e.Removed = append(e.Removed, Removal{Rcpt: rcpt, Filter: filter, Reason: reason})
			return
		}
	}
}

func (e *Envelope) callerName() string {
	if e.caller == nil {
		return ""
	}
	return e.caller.Filter.Name()
}

// HeaderOp is a kind of header change.
type HeaderOp uint8

const (
	// HeaderAdd appends a field (SMFIR_ADDHEADER).
	HeaderAdd HeaderOp = iota
	// HeaderInsert inserts a field at a position (SMFIR_INSHEADER).
	HeaderInsert
	// HeaderReplace replaces the Index-th field of that name, or deletes
	// it when Value is "" (SMFIR_CHGHEADER).
	HeaderReplace
)

// HeaderChange is one change to the message's header that a filter asked
// for; the front door makes it at the end of the message.
type HeaderChange struct {
	Op     HeaderOp
	Name   string
	Value  string
	Index  int // HeaderInsert: 0 is the top; HeaderReplace: 1 is the first field of Name
	Filter string
}

// maxHeaderAdditions bounds the fields one message gains (added,
// inserted, or replaced with a new value), and maxHeaderValue the length
// of one value: a filter's bug or a hostile input must not grow a message
// without bound. Deletions have no budget of their own: a message loses
// at most the fields it came with, a count the MTA's header limits and
// ours already bound, so a sender cannot spend the budget with fields for
// mailguard to delete (70 forged X-Virus-Status fields once left six of
// them and no room for mailguard's own).
const (
	maxHeaderAdditions = 64
	maxHeaderValue     = 2048
)

// AddHeader appends a header field when the message is delivered.
func (e *Envelope) AddHeader(name, value string) { e.headerChange(HeaderAdd, name, value, 0) }

// InsertHeader inserts a header field at index (0: before every other).
func (e *Envelope) InsertHeader(index int, name, value string) {
	e.headerChange(HeaderInsert, name, value, index)
}

// ChangeHeader replaces the index-th (from 1) field called name with value,
// or deletes it if value is "". Delete the fields of a name last first, so
// the indexes of the others hold.
func (e *Envelope) ChangeHeader(name string, index int, value string) {
	e.headerChange(HeaderReplace, name, value, index)
}

// headerChange records a change, or drops it (logged and counted at the
// end of a delivered message) when it is invalid or over its bound.
func (e *Envelope) headerChange(op HeaderOp, name, value string, index int) {
	filter := e.callerName()
	deletion := op == HeaderReplace && value == ""
	switch {
	case !validHeaderName(name):
		e.dropChange(filter, name, "invalid header name")
		return
	case index < 0 || op == HeaderReplace && index < 1:
		e.dropChange(filter, name, "invalid header index")
		return
	case deletion && e.deletions >= e.headerFields:
		e.dropChange(filter, name, fmt.Sprintf("more deletions than the %d header fields the message came with", e.headerFields))
		return
	case !deletion && e.additions >= maxHeaderAdditions:
		e.dropChange(filter, name, fmt.Sprintf("over %d header fields added", maxHeaderAdditions))
		return
	}
	if deletion {
		e.deletions++
	} else {
		e.additions++
	}
	e.headers = append(e.headers, HeaderChange{Op: op, Name: name, Value: cleanHeaderValue(value), Index: index, Filter: filter})
}

// droppedChange counts the changes of one filter dropped for one reason.
type droppedChange struct {
	Filter, Reason string
	Header         string // the first dropped change's field name
	Count          int
}

func (e *Envelope) dropChange(filter, header, reason string) {
	addDrop(&e.dropped, filter, header, reason)
}

// addDrop counts a dropped change; one entry per filter and reason keeps
// the record small however many are dropped.
func addDrop(list *[]droppedChange, filter, header, reason string) {
	for i := range *list {
		if d := &(*list)[i]; d.Filter == filter && d.Reason == reason {
			d.Count++
			return
		}
	}
	*list = append(*list, droppedChange{Filter: filter, Reason: reason, Header: header, Count: 1})
}

// validHeaderName: printable ASCII without ":" or blanks (RFC 5322 §2.2).
func validHeaderName(name string) bool {
	if name == "" || len(name) > 76 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c > '~' || c == ':' {
			return false
		}
	}
	return true
}

// cleanHeaderValue keeps a value on one line of bounded length.
func cleanHeaderValue(v string) string { return oneline.Header(v, maxHeaderValue) }

// MonitorHit is what a filter in monitor mode would have done.
type MonitorHit struct {
	Filter string
	Action string // "reject 550 5.7.0 VIRUS FOUND", "remove recipient", ...
	Rcpt   string // for a refusal or removal of one recipient
	Reason string
	Stage  string
	logged bool
}

// maxMonitorHits bounds the monitor records (and X-Mailguard headers) of
// one message.
const maxMonitorHits = 16

func (e *Envelope) monitor(h MonitorHit) {
	if len(e.monitored) < maxMonitorHits {
		e.monitored = append(e.monitored, h)
		return
	}
	addDrop(&e.monitorDropped, h.Filter, MonitorHeader, fmt.Sprintf("over %d monitor records", maxMonitorHits))
}

// AllStages is every stage, as an offline front door delivers them.
const AllStages = StageConnect | StageHelo | StageMail | StageRcpt | StageHeader | StageEndOfHeaders | StageBody | StageEndOfMessage

// Filter is one configured filter. It is immutable and shared by all
// sessions; per-message state lives in the Check it creates. A filter
// that holds something beyond one message implements Closer.
//
// Every call gets a context that ends when the MTA aborts the message or
// hangs up, when the daemon's drain timeout runs out, or when the
// filter's own timeout (per call) does. A filter that waits (on the
// network, a lock, a slow disk) must return soon after the context ends;
// the pipeline then applies the filter's on_error policy. The context is
// valid for that call only.
type Filter interface {
	// Name is the filter's configuration name, used in logs.
	Name() string
	// Stages returns the stages whose data the filter reads, and the
	// stages at which its verdict must reach the MTA at once (a verdict
	// given at another stage is held until the next stage that replies).
	Stages() (reads, decides Stage)
	// NewCheck starts the filter's work on one message.
	NewCheck(ctx context.Context, env *Envelope) (Check, error)
}

// Check is a filter's state for one message. The pipeline calls only the
// methods of the stages the filter reads, and always calls Close. Embed
// NopCheck to implement only the stages you need.
type Check interface {
	MailFrom(ctx context.Context, env *Envelope) (verdict.Verdict, error)
	Rcpt(ctx context.Context, env *Envelope, rcpt, args string) (verdict.Verdict, error)
	Header(ctx context.Context, name, value string) (verdict.Verdict, error)
	EndOfHeaders(ctx context.Context, env *Envelope) (verdict.Verdict, error)
	// Body gets the next chunk of the raw body. The chunk's bytes are
	// valid only until Body returns: the milter door reads them in place
	// from its buffer and the next packet overwrites them. A filter that
	// needs them later copies them.
	Body(ctx context.Context, chunk []byte) (verdict.Verdict, error)
	EndOfMessage(ctx context.Context, env *Envelope) (verdict.Verdict, error)
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
	// ModAddHeader: add or insert header fields (Envelope.AddHeader, InsertHeader).
	ModAddHeader
	// ModChangeHeader: change or delete header fields (Envelope.ChangeHeader).
	ModChangeHeader
)

// AllModifications is every change, as an offline front door allows them.
const AllModifications = ModRemoveRcpt | ModAddHeader | ModChangeHeader

// Modifier is implemented by filters that change messages.
type Modifier interface {
	Modifies() Modification
}

// Connector is implemented by filters that keep state per client
// connection, across its messages (a rate limiter's counters), or judge
// the connection itself (client address, HELO). The connection stages are
// called for a filter that names them in its reads or decides.
type Connector interface {
	// NewConnState starts the filter's state for one connection. Its
	// Close always runs, at disconnect or shutdown. A reload does not
	// touch it: the connection stays on the pipeline that opened it, so
	// what Connect and Helo learnt holds for all its messages.
	NewConnState(ctx context.Context, c *Conn) (ConnState, error)
}

// ConnState is a filter's state for one connection. A Check reaches it
// with Envelope.ConnState.
type ConnState interface {
	Connect(ctx context.Context, c *Conn) (verdict.Verdict, error)
	Helo(ctx context.Context, c *Conn) (verdict.Verdict, error)
	Close()
}

// NopConnState answers Pass at every connection stage.
type NopConnState struct{}

func (NopConnState) Connect(context.Context, *Conn) (verdict.Verdict, error) {
	return verdict.Pass, nil
}
func (NopConnState) Helo(context.Context, *Conn) (verdict.Verdict, error) { return verdict.Pass, nil }
func (NopConnState) Close()                                               {}

// NopCheck answers Pass at every stage.
type NopCheck struct{}

func (NopCheck) MailFrom(context.Context, *Envelope) (verdict.Verdict, error) {
	return verdict.Pass, nil
}
func (NopCheck) Rcpt(context.Context, *Envelope, string, string) (verdict.Verdict, error) {
	return verdict.Pass, nil
}
func (NopCheck) Header(context.Context, string, string) (verdict.Verdict, error) {
	return verdict.Pass, nil
}
func (NopCheck) EndOfHeaders(context.Context, *Envelope) (verdict.Verdict, error) {
	return verdict.Pass, nil
}
func (NopCheck) Body(context.Context, []byte) (verdict.Verdict, error) { return verdict.Pass, nil }
func (NopCheck) EndOfMessage(context.Context, *Envelope) (verdict.Verdict, error) {
	return verdict.Pass, nil
}
func (NopCheck) Close() {}

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
func (p ErrorPolicy) verdictFor(filter, reason string) verdict.Verdict {
	var v verdict.Verdict
	switch p {
	case OnErrorTempFail:
		v = verdict.TempFailf(verdict.CodeLocalError, verdict.EnhSystemTemp, "Temporary failure, try again later")
	case OnErrorReject:
		v = verdict.Rejectf(verdict.CodeMailboxUnavailable, verdict.EnhDeliveryNotAuthorized, "Message refused")
	default:
		return verdict.Pass
	}
	v.Filter, v.Reason, v.Policy = filter, reason, true
	return v
}

// Mode is how a filter's decisions take effect.
type Mode uint8

const (
	// Enforce: refusals reach the MTA.
	Enforce Mode = iota
	// Monitor: refusals are logged and counted as "would reject", an
	// X-Mailguard header records them (where the MTA allows header
	// changes), and the message goes on. For rolling out a filter or a
	// signature set safely.
	Monitor
)

// ParseMode reads "enforce" or "monitor".
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(s) {
	case "enforce":
		return Enforce, nil
	case "monitor":
		return Monitor, nil
	}
	return 0, fmt.Errorf("mode %q: want enforce or monitor", s)
}

func (m Mode) String() string {
	if m == Monitor {
		return "monitor"
	}
	return "enforce"
}

// DefaultTimeout bounds one filter call when the configuration names no
// timeout: well under Postfix's milter_command_timeout (30 s).
const DefaultTimeout = 10 * time.Second

// Env is what filters and the pipeline share with the rest of the daemon.
type Env struct {
	Log   *slog.Logger
	Stats *stats.Counter
	// Metrics, if not nil, hears what Stats hears and times every call
	// (Prometheus, the status page).
	Metrics *metrics.Core
	Now     func() time.Time
	// MaxRecipients bounds one message's recipients; 0 is
	// DefaultMaxRecipients.
	MaxRecipients int
}

// Hit counts one event under the summary's key ("filter:reason") and in
// the metrics: what a front door or a filter counts reaches both.
func (e Env) Hit(filter, reason string) {
	if e.Stats != nil {
		e.Stats.Hit(filter, reason)
	}
	e.Metrics.Hit(filter, reason)
}

// DefaultMaxRecipients is Postfix's smtpd_recipient_limit: what an MTA
// takes per message anyway.
const DefaultMaxRecipients = 1000

// MaxPathLength is RFC 5321's limit on a reverse or forward path, 256
// octets with its angle brackets (§4.5.3.1.3).
const MaxPathLength = 254

// limitsFilter names the pipeline's own refusals in logs and counters.
const limitsFilter = "limits"
