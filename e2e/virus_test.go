package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sobig = "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3"

// message builds DATA text: headers, then a base64-like body of lines
// 76 characters long (78 with CRLF). If sigLine >= 0, the signature
// replaces that body line, after prefix.
func message(subject string, lines, sigLine int, prefix string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <sender@example.org>\r\nTo: <user@example.edu>\r\nSubject: %s\r\nMIME-Version: 1.0\r\n", subject)
	b.WriteString("Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	filler := "R0lGODlhAQABAIAAAP8AAAAAACwAAAAAAQABAAACAkQBADsAbcdefghijklmnopqrstuvwxyz0123"
	for i := 0; i < lines; i++ {
		if i == sigLine {
			b.WriteString(prefix + sobig + "\r\n")
			continue
		}
		b.WriteString(filler[:76] + "\r\n")
	}
	return b.String()
}

// virusCase is one message sent through an MTA that uses mailguard.
type virusCase struct {
	name, data string
	infected   bool
}

// virusCases are the messages every MTA test sends. Postfix and Sendmail
// pass the body on in chunks of exactly 65,535 bytes; body line 840
// starts at byte 65,520, so a signature there spans a chunk boundary.
func virusCases() []virusCase {
	return []virusCase{
		{"clean", message("clean", 2000, -1, ""), false},
		{"signature mid-body", message("mid", 2000, 1000, ""), true},
		{"signature across a chunk boundary", message("boundary", 2000, 840, ""), true},
		{"signature after a NUL byte", message("nul", 2000, 1500, "\x00"), true},
		{"signature on the last line", message("last", 300, 299, ""), true},
		{"clean after an infected one", message("clean2", 100, -1, ""), false},
	}
}

// checkVirusReply asserts swaks's transcript: 550 5.7.0 at the end of DATA
// for an infected message, 250 2.0.0 for a clean one.
func checkVirusReply(t *testing.T, c virusCase, transcript string) {
	t.Helper()
	if c.infected && !strings.Contains(transcript, "<** 550 5.7.0 VIRUS FOUND") {
		t.Fatalf("infected message not refused with 550 5.7.0:\n%s", tail(transcript))
	}
	if !c.infected && !strings.Contains(transcript, "<-  250 2.0.0") {
		t.Fatalf("clean message not accepted:\n%s", tail(transcript))
	}
}

func TestPostfixVirus(t *testing.T) {
	d := startMailguard(t, `listen = "LISTEN"
[virus]
signatures = "signatures"
include_name = true
`, map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n"})
	p := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", milterPort(t, d.port, "postfix")), "user@example.edu")

	delivered := 0
	for _, c := range virusCases() {
		t.Run(c.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "msg")
			if err := os.WriteFile(file, []byte(c.data), 0o644); err != nil {
				t.Fatal(err)
			}
			out := p.swaks(t, "sender@example.org", "user@example.edu", file)
			checkVirusReply(t, c, out)
			if c.infected {
				if !strings.Contains(out, "VIRUS FOUND: WORM_SOBIG.B") {
					t.Errorf("include_name did not add the signature name:\n%s", tail(out))
				}
				return
			}
			delivered++
			msgs := p.delivered(t, "user", delivered)
			subject := strings.SplitN(c.data[strings.Index(c.data, "Subject: "):], "\r\n", 2)[0]
			if len(msgs) != delivered || !strings.Contains(strings.Join(msgs, ""), subject+"\n") {
				t.Fatalf("clean message (%s) not in the Maildir (have %d messages)", subject, len(msgs))
			}
		})
	}
	msgs := p.delivered(t, "user", 2)
	if len(msgs) != 2 {
		t.Fatalf("Maildir holds %d messages, want exactly the 2 clean ones", len(msgs))
	}
	for _, m := range msgs {
		if strings.Contains(m, sobig) {
			t.Fatal("an infected message was delivered")
		}
	}
	if got := d.lines("msg=decision", "reason=WORM_SOBIG.B", "mail.client=127.0.0.1", "mail.from=sender@example.org"); len(got) != 4 {
		t.Fatalf("want 4 decision log lines naming signature, client and sender, got %d:\n%s", len(got), d.logs)
	}
	// Each of Postfix's milter-reject lines names a queue id that our
	// decision line names too, so the two logs can be joined.
	maillog, _ := os.ReadFile(filepath.Join(p.dir, "maillog"))
	rejects := 0
	for _, l := range strings.Split(string(maillog), "\n") {
		if !strings.Contains(l, "milter-reject") {
			continue
		}
		rejects++
		id := strings.TrimSuffix(strings.Fields(strings.SplitN(l, "]: ", 2)[1])[0], ":")
		if got := d.lines("msg=decision", "mail.queue_id="+id, "user@example.edu"); len(got) != 1 {
			t.Errorf("no decision line for Postfix queue id %s", id)
		}
	}
	if rejects != 4 {
		t.Errorf("Postfix logged %d milter rejections, want 4", rejects)
	}
}

func tail(s string) string {
	lines := strings.Split(s, "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}
