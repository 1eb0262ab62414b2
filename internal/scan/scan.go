// Package scan is the offline front door: it feeds stored messages (.eml
// files, directories of them, Maildirs) through the same pipeline the milter
// door runs, so a postmaster can try signatures on a corpus before loading
// them into the daemon.
package scan

import (
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
	"mailguard/internal/stats"
	"mailguard/internal/verdict"
)

// Result counts what a scan saw.
type Result struct {
	Messages int
	Accepted int
	Rejected int
	Errors   int // unreadable files, and messages a filter could not judge
	Hits     stats.Summary
}

// ExitCode is the scan's exit status: 2 if anything could not be scanned,
// else 1 if any message would be rejected, else 0.
func (r Result) ExitCode() int {
	switch {
	case r.Errors > 0:
		return 2
	case r.Rejected > 0:
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
	fi, err := os.Stat(path)
	if err != nil {
		onError(path, err)
		return nil
	}
	if !fi.IsDir() {
		return []string{path}
	}
	var files []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
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
	f, err := os.Open(path)
	if err != nil {
		s.fail(path, err, res)
		return
	}
	defer f.Close()
	v, err := Message(s.Pipeline, f)
	if err != nil {
		s.fail(path, err, res)
		return
	}
	res.Messages++
	switch v.Action {
	case verdict.Reject:
		res.Rejected++
	case verdict.TempFail:
		res.Errors++
	default:
		res.Accepted++
	}
	line := path + ": accept"
	if v.Final() {
		line = path + ": " + v.String()
	}
	if v.Final() && v.Reason != "" {
		line += fmt.Sprintf(" (%s: %s)", v.Filter, v.Reason)
	}
	fmt.Fprintln(s.Out, line)
}

// scanConn is the client a scanned message seems to come from.
var scanConn = pipeline.Conn{Hostname: "scan", Addr: ""}

// Message runs one stored message through the pipeline, stage by stage as
// the milter door would, and returns its verdict. The envelope sender comes
// from Return-Path and the recipients from Delivered-To or X-Original-To,
// when the file has them.
func Message(p *pipeline.Pipeline, r io.Reader) (verdict.Verdict, error) {
	mr := message.NewReader(r)
	fields, err := mr.Header()
	if err != nil {
		return verdict.Pass, err
	}
	conn := scanConn
	msg, v := p.Begin(&conn, pipeline.AllStages, envelopeSender(fields), "")
	defer msg.Close()
	if v.Final() {
		return v, nil
	}
	for _, rcpt := range envelopeRecipients(fields) {
		msg.Rcpt(rcpt, "")
	}
	for _, f := range fields {
		msg.Header(f.Name, f.Value)
	}
	msg.EndOfHeaders()
	for {
		chunk, err := mr.BodyChunk()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return verdict.Pass, err
		}
		if v := msg.Body(chunk); v.Final() {
			break
		}
	}
	return msg.End(), nil
}

func envelopeSender(fields []message.Field) string {
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
