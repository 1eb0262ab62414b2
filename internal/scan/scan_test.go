package scan_test

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all"
	"mailguard/internal/pipeline"
	"mailguard/internal/scan"
)

// setup writes a configuration and the files it names into a folder and
// returns the pipeline it builds.
func setup(t *testing.T, config string, files map[string]string) *pipeline.Pipeline {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		path := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(strings.ReplaceAll(content, "DIR", dir)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c, err := filters.Parse(filepath.Join(dir, "m.toml"), []byte(config))
	if err != nil {
		t.Fatal(err)
	}
	p, err := filters.Build(c, pipeline.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func outcome(t *testing.T, p *pipeline.Pipeline, msg string) scan.Outcome {
	t.Helper()
	out, err := scan.Message(p, strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

const quotaFiles = "full@example.edu DIR/full/Maildir\nroomy@example.edu DIR/roomy/Maildir\n"

// scan counts every stage's verdict: a quota refusal at RCPT is a refusal.
func TestScanQuota(t *testing.T) {
	p := setup(t, "filters = [\"quota\"]\n[quota]\nusers = \"users\"\n", map[string]string{
		"users":                     quotaFiles,
		"full/Maildir/maildirsize":  "1000S\n990 1\n",
		"roomy/Maildir/maildirsize": "100000000S\n10 1\n",
		"full/Maildir/new/.keep":    "",
		"roomy/Maildir/new/.keep":   "",
		"full/Maildir/cur/.keep":    "",
		"roomy/Maildir/cur/.keep":   "",
		"full/Maildir/tmp/.keep":    "",
		"roomy/Maildir/tmp/.keep":   "",
	})
	all := outcome(t, p, "Return-Path: <a@example.org>\nDelivered-To: full@example.edu\nSubject: x\n\nhello\n")
	if all.Verdict.String() != "reject 552 5.2.2 Mailbox full" || len(all.Refused) != 0 {
		t.Errorf("every recipient full: %s", all)
	}
	some := outcome(t, p, "Return-Path: <a@example.org>\nDelivered-To: full@example.edu\nDelivered-To: roomy@example.edu\n\nhello\n")
	if some.Verdict.Final() || len(some.Refused) != 1 || some.Refused[0].Rcpt != "full@example.edu" ||
		!strings.Contains(some.String(), "accept for the other recipients; <full@example.edu>: reject 552 5.2.2 Mailbox full (quota: ") {
		t.Errorf("one recipient full: %s", some)
	}
	if none := outcome(t, p, "Delivered-To: roomy@example.edu\n\nhello\n"); none.String() != "accept" {
		t.Errorf("room left: %s", none)
	}
}

// A sender blocked at RCPT, and a header From: blocked by some recipients
// (removed) or all (refused).
func TestScanSenders(t *testing.T) {
	p := setup(t, "filters = [\"senders\"]\n[senders]\nblocklist = \"blocklist\"\n", map[string]string{
		"blocklist": "alice@example.edu spammer@example.com\n",
	})
	env := outcome(t, p, "Return-Path: <spammer@example.com>\nDelivered-To: alice@example.edu\n\nhi\n")
	if env.Verdict.String() != "reject 550 5.7.1 Sender blocked by recipient" || env.Verdict.Reason != "envelope sender blocked" {
		t.Errorf("envelope sender: %s", env)
	}
	some := outcome(t, p, "Return-Path: <x@example.org>\nDelivered-To: alice@example.edu\nDelivered-To: bob@example.edu\nFrom: <spammer@example.com>\n\nhi\n")
	if some.Verdict.Final() || !strings.Contains(some.String(), "<alice@example.edu>: removed (senders: header From: blocked)") {
		t.Errorf("header From: blocked by one of two: %s", some)
	}
	all := outcome(t, p, "Delivered-To: alice@example.edu\nFrom: <spammer@example.com>\n\nhi\n")
	if all.Verdict.String() != "reject 550 5.7.1 Sender blocked by recipient" {
		t.Errorf("header From: blocked by every recipient: %s", all)
	}
}

// The virus filter at the end of the message, enforced and in monitor mode.
func TestScanVirus(t *testing.T) {
	const msg = "Subject: x\n\nuqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3\n"
	if out := outcome(t, setup(t, "", nil), msg); out.String() != "reject 550 5.7.0 VIRUS FOUND (virus: WORM_SOBIG.B)" {
		t.Errorf("enforce: %s", out)
	}
	out := outcome(t, setup(t, "[virus]\nmode = \"monitor\"\n", nil), msg)
	if out.Verdict.Final() || out.String() != "accept; monitor: virus would reject 550 5.7.0 VIRUS FOUND (WORM_SOBIG.B)" {
		t.Errorf("monitor: %s", out)
	}
}

// A copy the capture filter wrote is scanned with its own envelope: the
// X-Envelope-* headers, not Return-Path and Delivered-To.
func TestScanCapturedCopy(t *testing.T) {
	p := setup(t, "filters = [\"senders\"]\n[senders]\nblocklist = \"blocklist\"\n", map[string]string{
		"blocklist": "alice@example.edu spammer@example.com\n",
	})
	copy := "X-Envelope-Client: mx.example.org [192.0.2.9]\r\nX-Envelope-Helo: mx.example.org\r\n" +
		"X-Envelope-From: <spammer@example.com>\r\nX-Envelope-To: <alice@example.edu>, <bob@example.edu>\r\n" +
		"X-Envelope-Queue-ID: 4BC1F984436\r\nReturn-Path: <other@example.org>\r\nSubject: hi\r\n\r\nhello\r\n"
	out := outcome(t, p, copy)
	if out.Verdict.Final() || len(out.Refused) != 1 || out.Refused[0].Rcpt != "alice@example.edu" || out.Refused[0].Verdict.Reason != "envelope sender blocked" {
		t.Fatalf("captured envelope not used: %s", out)
	}
}

// One pattern syntax everywhere: "*@domain" means the same in a blocklist
// as in the quota exemptions (it used to be taken, and never match).
func TestOnePatternSyntax(t *testing.T) {
	p := setup(t, "filters = [\"senders\"]\n[senders]\nblocklist = \"blocklist\"\n", map[string]string{
		"blocklist": "alice@example.edu *@pest.example\nalice@example.edu news@*\n",
	})
	for _, from := range []string{"x@pest.example", "news@anywhere.example"} {
		out := outcome(t, p, "Return-Path: <"+from+">\nDelivered-To: alice@example.edu\n\nhi\n")
		if out.Verdict.Reason != "envelope sender blocked" {
			t.Errorf("%s not blocked: %s", from, out)
		}
	}
}
