// Package scan is the offline front door: it feeds stored messages (.eml
// files, directories of them, Maildirs) through the same pipeline the milter
// door runs, so a postmaster can try signatures on a corpus before loading
// them into the daemon.
package scan

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/mail"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"mailguard/internal/message"
	"mailguard/internal/pipeline"
	"mailguard/internal/safefile"
	"mailguard/internal/stats"
	"mailguard/internal/verdict"
)

// Result counts what a scan saw.
type Result struct {
	Messages int
	Accepted int
	Rejected int
	// PartlyRejected counts messages refused for some recipients only.
	PartlyRejected int
	Errors         int // unreadable files, and messages a filter could not judge
	Hits           stats.Summary
}

// ExitCode is the scan's exit status: 2 if anything could not be scanned
// or there was no message at all (a mistyped folder must not pass for a
// clean corpus), else 1 if any message would be rejected, else 0.
func (r Result) ExitCode() int {
	switch {
	case r.Errors > 0 || r.Messages == 0:
		return 2
	case r.Rejected > 0 || r.PartlyRejected > 0:
		return 1
	}
	return 0
}

// Scanner runs messages through a pipeline.
type Scanner struct {
	Pipeline *pipeline.Pipeline
	Stats    *stats.Counter // the pipeline's counter, for hits per signature
	Out      io.Writer      // one line per message
}

// Run scans every path and prints one line per message.
func (s *Scanner) Run(paths []string) Result {
	var res Result
	files := Files(paths, func(path string, err error) { s.fail(path, err, &res) })
	for _, file := range files {
		s.scanFile(file, &res)
	}
	if s.Stats != nil {
		res.Hits = s.Stats.Take()
	}
	return res
}

// Files lists the message files the paths name: a file itself, or every
// regular file below a directory except Maildir bookkeeping files and
// Maildir tmp/ folders (where files are still being written), sorted per
// path. Paths that cannot be read are passed to onError.
func Files(paths []string, onError func(path string, err error)) []string {
	var files []string
	for _, p := range paths {
		files = append(files, filesUnder(p, onError)...)
	}
	return files
}

func filesUnder(path string, onError func(string, error)) []string {
	// A link named on the command line is followed (a corpus is often a
	// link to where the mail is); links below it are not.
	root, err := filepath.EvalSymlinks(path)
	if err != nil {
		onError(path, err)
		return nil
	}
	fi, err := os.Stat(root)
	if err != nil {
		onError(path, err)
		return nil
	}
	if !fi.IsDir() {
		return []string{path}
	}
	var files []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if rel, relErr := filepath.Rel(root, p); relErr == nil {
			p = filepath.Join(path, rel) // as the user named it
		}
		if err != nil {
			onError(p, err)
			return nil
		}
		if d.IsDir() {
			if d.Name() == "tmp" && p != path && isMaildir(filepath.Dir(p)) {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() && !isMaildirMeta(p, d.Name()) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		onError(path, err)
	}
	sort.Strings(files)
	return files
}

func isMaildir(dir string) bool {
	for _, sub := range []string{"cur", "new"} {
		if fi, err := os.Stat(filepath.Join(dir, sub)); err == nil && fi.IsDir() {
			return true
		}
	}
	return false
}

// isMaildirMeta tells Maildir++ and Dovecot bookkeeping files from messages.
func isMaildirMeta(path, name string) bool {
	if !isMaildir(filepath.Dir(path)) {
		return false
	}
	return name == "maildirsize" || name == "maildirfolder" || strings.HasPrefix(name, "dovecot") || strings.HasPrefix(name, "courier") || name == "subscriptions"
}

func (s *Scanner) fail(path string, err error, res *Result) {
	res.Errors++
	fmt.Fprintf(s.Out, "%s: error: %v\n", path, err)
}

func (s *Scanner) scanFile(path string, res *Result) {
	// Not blocking on a FIFO named on the command line, nor reading a
	// device: only regular files are messages.
	f, _, err := safefile.Open(path, safefile.Options{})
	if err != nil {
		s.fail(path, err, res)
		return
	}
	defer f.Close()
	out, err := Message(s.Pipeline, f)
	if err != nil {
		s.fail(path, err, res)
		return
	}
	res.Messages++
	v := out.Verdict
	switch {
	case v.Action == verdict.Reject:
		res.Rejected++
	case v.Action == verdict.TempFail:
		res.Errors++
	case len(out.Refused) > 0:
		res.PartlyRejected++
	default:
		res.Accepted++
	}
	fmt.Fprintln(s.Out, path+": "+out.String())
}

// Outcome is what the pipeline decided for one stored message.
type Outcome struct {
	// Verdict is the message's: final when it is refused as a whole (at
	// any stage, or at RCPT for every recipient), else Pass.
	Verdict verdict.Verdict
	// Refused lists the recipients refused one by one at RCPT, when the
	// message went on for others.
	Refused []Refusal
	// Removed lists recipients a filter took off the delivered message.
	Removed []pipeline.Removal
	// Monitored is what filters in monitor mode would have done.
	Monitored []pipeline.MonitorHit
	// Headers are the header changes filters made to the delivered message.
	Headers []pipeline.HeaderChange
}

// Refusal is one recipient refused at RCPT.
type Refusal struct {
	Rcpt    string
	Verdict verdict.Verdict
}

// String is the outcome as scan prints it after the file name.
func (o Outcome) String() string {
	var b strings.Builder
	if o.Verdict.Final() {
		b.WriteString(o.Verdict.String())
		if o.Verdict.Reason != "" {
			fmt.Fprintf(&b, " (%s: %s)", o.Verdict.Filter, o.Verdict.Reason)
		}
	} else if len(o.Refused) > 0 {
		b.WriteString("accept for the other recipients")
	} else {
		b.WriteString("accept")
	}
	for _, r := range o.Refused {
		fmt.Fprintf(&b, "; <%s>: %s (%s: %s)", r.Rcpt, r.Verdict.String(), r.Verdict.Filter, r.Verdict.Reason)
	}
	for _, r := range o.Removed {
		fmt.Fprintf(&b, "; <%s>: removed (%s: %s)", r.Rcpt, r.Filter, r.Reason)
	}
	for _, h := range o.Monitored {
		fmt.Fprintf(&b, "; monitor: %s would %s", h.Filter, h.Action)
		if h.Rcpt != "" {
			fmt.Fprintf(&b, " <%s>", h.Rcpt)
		}
		if h.Reason != "" {
			fmt.Fprintf(&b, " (%s)", h.Reason)
		}
	}
	return b.String()
}

// scanConn is the client a scanned message seems to come from, unless the
// file records its own (a capture copy's X-Envelope-Client and -Helo).
func scanConn(fields []message.Field) pipeline.Conn {
	c := pipeline.Conn{Hostname: "scan"}
	if v, ok := field(fields, "X-Envelope-Client"); ok {
		// "hostname [addr]", as the capture filter writes it
		host, addr, _ := strings.Cut(v, " [")
		c.Hostname, c.Addr = strings.TrimSpace(host), strings.TrimSuffix(strings.TrimSpace(addr), "]")
	}
	if v, ok := field(fields, "X-Envelope-Helo"); ok {
		c.Helo = v
	}
	return c
}

func field(fields []message.Field, name string) (string, bool) {
	for _, f := range fields {
		if strings.EqualFold(f.Name, name) {
			return strings.TrimSpace(f.Value), true
		}
	}
	return "", false
}

// Message runs one stored message through the pipeline, stage by stage as
// the milter door would, and returns what it decided at every stage. The
// envelope comes from the capture filter's X-Envelope-* headers when the
// file is a captured copy; else the sender from Return-Path and the
// recipients from Delivered-To or X-Original-To, when the file has them.
func Message(p *pipeline.Pipeline, r io.Reader) (Outcome, error) {
	mr := message.NewReader(r)
	fields, err := mr.Header()
	if err != nil {
		return Outcome{}, err
	}
	conn := scanConn(fields)
	cn := p.Open(context.Background(), &conn)
	defer cn.Close()
	if v := cn.Connect(); v.Final() {
		return Outcome{Verdict: v}, nil
	}
	if conn.Helo != "" {
		if v := cn.Helo(); v.Final() {
			return Outcome{Verdict: v}, nil
		}
	}
	msg, v := cn.Begin(pipeline.AllStages, pipeline.AllModifications, envelopeSender(fields), "")
	defer msg.Close()
	out := Outcome{}
	finish := func(v verdict.Verdict) Outcome {
		env := msg.Envelope()
		out.Verdict, out.Monitored = v, env.Monitored()
		if !v.Final() {
			out.Removed, out.Headers = env.Removed, env.Headers()
		}
		return out
	}
	if v.Final() {
		msg.Close()
		return finish(v), nil
	}
	rcpts := envelopeRecipients(fields)
	for _, rcpt := range rcpts {
		v := msg.Rcpt(rcpt, "")
		switch v.Action {
		case verdict.Reject, verdict.TempFail:
			out.Refused = append(out.Refused, Refusal{Rcpt: rcpt, Verdict: v})
		case verdict.Continue:
		default:
			return finish(msg.End()), nil
		}
	}
	if len(rcpts) > 0 && len(out.Refused) == len(rcpts) {
		// Refused for everyone: the MTA would not take the message. The
		// first refusal stands for it, the others are listed.
		v := out.Refused[0].Verdict
		out.Refused = out.Refused[1:]
		msg.Close()
		return finish(v), nil
	}
	for _, f := range fields {
		if v := msg.Header(f.Name, f.Value); v.Final() {
			return finish(msg.End()), nil
		}
	}
	if v := msg.EndOfHeaders(); v.Final() {
		return finish(msg.End()), nil
	}
	for {
		chunk, err := mr.BodyChunk()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Outcome{}, err
		}
		if v := msg.Body(chunk); v.Final() {
			break
		}
	}
	return finish(msg.End()), nil
}

func envelopeSender(fields []message.Field) string {
	if v, ok := field(fields, "X-Envelope-From"); ok {
		return strings.TrimSuffix(strings.TrimPrefix(v, "<"), ">")
	}
	for _, f := range fields {
		if strings.EqualFold(f.Name, "Return-Path") {
			if a, err := mail.ParseAddress(f.Value); err == nil {
				return a.Address
			}
			return ""
		}
	}
	return ""
}

func envelopeRecipients(fields []message.Field) []string {
	var rcpts []string
	if v, ok := field(fields, "X-Envelope-To"); ok {
		for _, r := range strings.Split(v, ",") {
			if r = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(r), "<"), ">"); r != "" {
				rcpts = append(rcpts, r)
			}
		}
		return rcpts
	}
	for _, name := range []string{"Delivered-To", "X-Original-To"} {
		for _, f := range fields {
			if strings.EqualFold(f.Name, name) {
				if a, err := mail.ParseAddress(f.Value); err == nil {
					rcpts = append(rcpts, a.Address)
				}
			}
		}
		if len(rcpts) > 0 {
			return rcpts
		}
	}
	return rcpts
}
