// Package hostilemail generates the messages and envelopes an attacker or
// a broken client sends a mail server: nesting bombs, giant header and body
// lines, NUL bytes, 8-bit junk, huge bodies and attachments, zip bombs,
// broken MIME, thousands of recipients and addresses meant to end up as
// file names. Each message is written as it streams, so a 50 MB one costs
// the sender no 50 MB of memory and nothing large is kept in the repository.
// Every generator is deterministic: the same Options give the same bytes.
package hostilemail

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// Message is one SMTP transaction: an envelope and the DATA content.
type Message struct {
	// Name is short and unique within the corpus; What says what it is.
	Name, What string
	// From and To are sent as they are, inside <>, whatever bytes they
	// hold (NUL, CR, 8-bit): the point is what the server makes of them.
	From string
	To   []string
	// NullSender sends MAIL FROM:<> (a bounce); From is then unused.
	NullSender bool
	// Params follow MAIL FROM:<...> ("SIZE=104857600", "SMTPUTF8").
	Params string
	// Write writes the content after DATA: lines ending in CRLF (unless
	// the message is about other line ends), not dot-stuffed, without
	// the final ".". The sender stuffs dots and ends it.
	Write func(w io.Writer) error
}

// Options choose the sizes, which the long run makes full.
type Options struct {
	// Big is the size of the large plain body (50 MB in full).
	Big int64
	// Attachment is the size of the large base64 attachment, encoded.
	Attachment int64
	// Recipients is how many recipients the many-recipients message has.
	Recipients int
	// Zeros is how many MiB of zeros the deflate bomb inflates to.
	Zeros int
	// Fields is how many header fields the header of many fields has,
	// ZipNames how many names the zip of many names has.
	Fields, ZipNames int
	// Local is a local mailbox ("user@example.edu") that gets the
	// messages; Remote a domain the MTA accepts for any local part (so
	// a hostile recipient reaches the milter).
	Local, Remote string
	// Signature is a line the virus filter knows; Blocked a header From:
	// address the local mailbox blocks; Virus a file the virus scanner
	// (clamd) knows.
	Signature, Blocked, Virus string
}

// Defaults gives the sizes o leaves zero those of the default test run:
// small enough for a short run, each still past the limit it tests.
func Defaults(o Options) Options {
	if o.Big == 0 {
		o.Big = 3 << 20
	}
	if o.Attachment == 0 {
		o.Attachment = 2 << 20
	}
	if o.Fields == 0 {
		o.Fields = 20000
	}
	if o.Recipients == 0 {
		o.Recipients = 1200
	}
	if o.ZipNames == 0 {
		o.ZipNames = 12000
	}
	if o.Zeros == 0 {
		o.Zeros = 8
	}
	return o
}

// Full are the sizes the long run uses.
func Full(o Options) Options {
	o.Big, o.Attachment, o.Recipients, o.Zeros, o.Fields, o.ZipNames = 50<<20, 30<<20, 2000, 200, 100000, 20000
	return o
}

// header is the top of every generated message.
func header(subject string, more ...string) string {
	h := "From: <sender@example.org>\r\nTo: <user@example.edu>\r\nSubject: " + subject + "\r\n" +
		"Date: Mon, 30 Nov 2026 01:00:00 +0000\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", "-") + "@client.example.org>\r\n"
	for _, m := range more {
		h += m + "\r\n"
	}
	return h
}

// text wraps a fixed string as a message writer.
func text(s string) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := io.WriteString(w, s)
		return err
	}
}

// buffered runs fn on a buffered writer and flushes it.
func buffered(fn func(w *bufio.Writer)) func(io.Writer) error {
	return func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 64<<10)
		fn(bw)
		return bw.Flush()
	}
}

// repeat writes line over and over until about n bytes are written.
func repeat(w *bufio.Writer, line string, n int64) {
	for written := int64(0); written < n; written += int64(len(line)) {
		w.WriteString(line)
	}
}

// rng is a small deterministic generator (xorshift), so junk is the same
// on every run without math/rand's state.
type rng uint64

func (r *rng) next() uint64 {
	x := uint64(*r)
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	*r = rng(x)
	return x
}

// fill fills b with pseudo-random bytes.
func (r *rng) fill(b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := r.next()
		for j := i; j < len(b) && j < i+8; j++ {
			b[j] = byte(v)
			v >>= 8
		}
	}
}

// Corpus is every hostile message, the control messages among them.
func Corpus(o Options) []Message {
	o = Defaults(o)
	var c []Message
	add := func(m Message) {
		if m.From == "" && !m.NullSender {
			m.From = "sender@example.org"
		}
		if m.To == nil {
			m.To = []string{o.Local}
		}
		c = append(c, m)
	}
	for _, m := range structure(o) {
		add(m)
	}
	for _, m := range lines(o) {
		add(m)
	}
	for _, m := range sizes(o) {
		add(m)
	}
	for _, m := range archives(o) {
		add(m)
	}
	for _, m := range envelopes(o) {
		add(m)
	}
	seen := map[string]bool{}
	for _, m := range c {
		if seen[m.Name] {
			panic(fmt.Sprintf("hostilemail: two messages named %q", m.Name))
		}
		seen[m.Name] = true
	}
	return c
}

// Clean is the control message to the local mailbox to: plain, small,
// nothing to refuse.
func Clean(name, to string) Message {
	s := header(name) + "\r\nA plain message.\r\n"
	return Message{Name: name, What: "a plain message", From: "sender@example.org", To: []string{to}, Write: text(s)}
}
