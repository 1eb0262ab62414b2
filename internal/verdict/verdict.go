// Package verdict is the one answer type every filter gives and every front
// door turns into its own reply: continue, accept, reject, tempfail or
// discard, with the SMTP reply code, the RFC 3463 enhanced status code and
// the text the client sees.
package verdict

import (
	"fmt"

	"mailguard/internal/oneline"
)

// Action is what should happen to the message (or, at RCPT, the recipient).
type Action uint8

const (
	// Continue: no decision; the next filter and stage go on.
	Continue Action = iota
	// Accept: deliver without asking further filters.
	Accept
	// Reject: refuse permanently (5xx).
	Reject
	// TempFail: refuse for now (4xx); the sender retries.
	TempFail
	// Discard: accept and drop. Only for an explicit configuration; never
	// chosen by a filter on its own (see DESIGN: never accept-then-drop).
	Discard
)

func (a Action) String() string {
	switch a {
	case Continue:
		return "continue"
	case Accept:
		return "accept"
	case Reject:
		return "reject"
	case TempFail:
		return "tempfail"
	case Discard:
		return "discard"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Reply codes, RFC 5321 §4.2.3, and enhanced status codes, RFC 3463 §3.
const (
	// CodeServiceUnavailable: 421, closing the transmission channel (RFC 5321 §4.2.3).
	CodeServiceUnavailable = 421
	// CodeLocalError: 451, local error in processing (RFC 5321 §4.2.3).
	CodeLocalError = 451
	// CodeTooManyRecipients: 452, too many recipients (RFC 5321 §4.5.3.1.10).
	CodeTooManyRecipients = 452
	// CodePathTooLong: 501, path too long (RFC 5321 §4.5.3.1.10).
	CodePathTooLong = 501
	// CodeMailboxUnavailable: 550, mailbox unavailable / policy refusal (RFC 5321 §4.2.3).
	CodeMailboxUnavailable = 550
	// CodeExceededStorage: 552, exceeded storage allocation (RFC 5321 §4.2.3).
	CodeExceededStorage = 552
	// CodeTransactionFailed: 554, transaction failed (RFC 5321 §4.2.3).
	CodeTransactionFailed = 554

	// EnhSecurity: 5.7.0, other or undefined security status (RFC 3463 §3.8).
	EnhSecurity = "5.7.0"
	// EnhDeliveryNotAuthorized: 5.7.1, delivery not authorized, message refused (RFC 3463 §3.8).
	EnhDeliveryNotAuthorized = "5.7.1"
	// EnhMailboxFull: 5.2.2, mailbox full (RFC 3463 §3.3).
	EnhMailboxFull = "5.2.2"
	// EnhMediaError: 5.6.0, other or undefined media error (RFC 3463 §3.7).
	EnhMediaError = "5.6.0"
	// EnhMessageTooBig: 5.3.4, message too big for system (RFC 3463 §3.4).
	EnhMessageTooBig = "5.3.4"
	// EnhSystemTemp: 4.3.0, other or undefined mail system status (RFC 3463 §3.5).
	EnhSystemTemp = "4.3.0"
	// EnhSecurityTemp: 4.7.1, delivery not authorized, for now (RFC 3463 §3.8).
	EnhSecurityTemp = "4.7.1"
	// EnhTooManyRecipients: 4.5.3, too many recipients (RFC 3463 §3.6).
	EnhTooManyRecipients = "4.5.3"
	// EnhBadDestinationSyntax: 5.1.3, bad destination mailbox address syntax (RFC 3463 §3.2).
	EnhBadDestinationSyntax = "5.1.3"
	// EnhBadSenderSyntax: 5.1.7, bad sender's mailbox address syntax (RFC 3463 §3.2).
	EnhBadSenderSyntax = "5.1.7"
)

// Verdict is a filter's answer at one stage.
type Verdict struct {
	Action   Action
	Code     int    // SMTP reply code; 0 lets the front door choose the default for Action
	Enhanced string // RFC 3463 status code, e.g. "5.7.0"
	Text     string // what the SMTP client sees
	// Filter and Reason are for the log only, never for the client: which
	// filter decided, and why (a signature name, an error).
	Filter string
	Reason string
	// Policy marks the verdict of a filter that failed (an error, a
	// timeout): its on_error policy, not a judgement of the message.
	Policy bool
	// Key is the reason's stable name for counters when Reason holds
	// varying text ("mailbox full" for "90000 of 100000 bytes used");
	// "" counts under Reason.
	Key string
}

// CounterKey is the stable name a verdict is counted under.
func (v Verdict) CounterKey() string {
	if v.Key != "" {
		return v.Key
	}
	return v.Reason
}

// Final reports whether the verdict ends the message (or, at RCPT, decides
// the recipient).
func (v Verdict) Final() bool { return v.Action != Continue }

// Pass is the verdict "no decision".
var Pass = Verdict{}

// Rejectf returns a permanent refusal.
func Rejectf(code int, enhanced, format string, args ...any) Verdict {
	return Verdict{Action: Reject, Code: code, Enhanced: enhanced, Text: fmt.Sprintf(format, args...)}
}

// TempFailf returns a temporary refusal.
func TempFailf(code int, enhanced, format string, args ...any) Verdict {
	return Verdict{Action: TempFail, Code: code, Enhanced: enhanced, Text: fmt.Sprintf(format, args...)}
}

// Reply is the SMTP reply for a Reject or TempFail verdict, with defaults
// filled in and the code, enhanced code and text kept consistent: the
// enhanced code's class must match the reply's class (RFC 3463 §2), and a
// code outside the class of the action is replaced by the default.
func (v Verdict) Reply() (code int, enhanced, text string) {
	code, enhanced, text = v.Code, v.Enhanced, v.Text
	switch v.Action {
	case Reject:
		if code < 500 || code > 599 {
			code = CodeMailboxUnavailable
		}
		if len(enhanced) < 5 || enhanced[0] != '5' {
			enhanced = EnhDeliveryNotAuthorized
		}
		if text == "" {
			text = "Message refused"
		}
	case TempFail:
		if code < 400 || code > 499 {
			code = CodeLocalError
		}
		if len(enhanced) < 5 || enhanced[0] != '4' {
			enhanced = EnhSystemTemp
		}
		if text == "" {
			text = "Try again later"
		}
	default:
		return 0, "", ""
	}
	return code, enhanced, sanitize(text)
}

// sanitize keeps a reply text on one line of printable ASCII, so no
// configured or computed text can break the SMTP dialogue.
func sanitize(s string) string { return oneline.ASCII(s, maxReplyText, ' ') }

// maxReplyText bounds a reply's text, well under RFC 5321's 512-octet
// reply line (§4.5.3.1.5).
const maxReplyText = 400

// String is the verdict as a log or report line, e.g.
// "reject 550 5.7.0 VIRUS FOUND".
func (v Verdict) String() string {
	if v.Action != Reject && v.Action != TempFail {
		return v.Action.String()
	}
	code, enh, text := v.Reply()
	return fmt.Sprintf("%s %d %s %s", v.Action, code, enh, text)
}
