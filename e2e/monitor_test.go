package e2e

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Monitor mode through a real Postfix: an infected message is delivered,
// with an X-Mailguard header (a header change made by Postfix on our
// request) saying what the filter would have done, and the log and the
// summary say "would reject".
func TestPostfixMonitorMode(t *testing.T) {
	d := startMailguard(t, `listen = "LISTEN"
[virus]
signatures = "signatures"
mode = "monitor"
[log]
summary_interval = "1s"
`, map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n"})
	p := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", d.port), "user@example.edu")

	for i, data := range []string{message("infected", 300, 100, ""), message("clean", 300, -1, "")} {
		file := filepath.Join(t.TempDir(), "msg")
		if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if out := p.swaks(t, "sender@example.org", "user@example.edu", file); !strings.Contains(out, "<-  250 2.0.0") {
			t.Fatalf("message %d not accepted in monitor mode:\n%s", i, tail(out))
		}
	}
	msgs := p.delivered(t, "user", 2)
	if len(msgs) != 2 {
		t.Fatalf("Maildir holds %d messages, want both", len(msgs))
	}
	marked := 0
	for _, m := range msgs {
		head, _, _ := strings.Cut(m, "\n\n")
		if strings.Contains(m, sobig) {
			if !strings.Contains(head, "X-Mailguard: monitor; filter=virus; would reject 550 5.7.0 VIRUS FOUND; reason=WORM_SOBIG.B") {
				t.Errorf("infected message delivered without its X-Mailguard header:\n%s", head)
			}
			marked++
		} else if strings.Contains(head, "X-Mailguard") {
			t.Errorf("clean message marked:\n%s", head)
		}
	}
	if marked != 1 {
		t.Fatalf("%d infected messages delivered, want 1", marked)
	}
	if got := d.lines("msg=decision", "mode=monitor", `verdict="would reject 550 5.7.0 VIRUS FOUND"`, "reason=WORM_SOBIG.B", "mail.queue_id="); len(got) != 1 {
		t.Fatalf("want one monitor decision line with the queue id, got %d:\n%s", len(got), d.logs)
	}
	waitForLog(t, d, "msg=summary", `"hits.virus.would reject"=1`)
}

// A monitor-mode filter that decides before the end of the message is
// recorded once, whatever filters run beside it: one X-Mailguard header
// on the delivered message, one decision line, one count in the summary.
func TestPostfixMonitorRecordsOnce(t *testing.T) {
	for _, filters := range []string{`["attachments"]`, `["senders", "attachments"]`} {
		t.Run(filters, func(t *testing.T) {
			d := startMailguard(t, `listen = "LISTEN"
filters = `+filters+`
[senders]
blocklist = "blocklist"
[attachments]
block_names = ["*.exe"]
mode = "monitor"
[log]
summary_interval = "1s"
`, map[string]string{"blocklist": "someone@example.edu spammer@bad.example\n"})
			p := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", d.port), "user@example.edu")
			file := filepath.Join(t.TempDir(), "msg")
			if err := os.WriteFile(file, []byte(exeThenLongPart()), 0o644); err != nil {
				t.Fatal(err)
			}
			if out := p.swaks(t, "sender@example.org", "user@example.edu", file); !strings.Contains(out, "<-  250 2.0.0") {
				t.Fatalf("message not accepted in monitor mode:\n%s", tail(out))
			}
			msgs := p.delivered(t, "user", 1)
			if len(msgs) != 1 {
				t.Fatalf("Maildir holds %d messages, want 1", len(msgs))
			}
			head, _, _ := strings.Cut(strings.ReplaceAll(msgs[0], "\r\n", "\n"), "\n\n")
			const want = "X-Mailguard: monitor; filter=attachments; would reject 550 5.7.0 Attachment refused: setup.exe"
			if n := strings.Count(head, want); n != 1 {
				t.Errorf("delivered with %d X-Mailguard headers, want 1:\n%s", n, head)
			}
			if got := d.lines("msg=decision", "filter=attachments", "mode=monitor", "mail.queue_id="); len(got) != 1 {
				t.Errorf("%d monitor decision lines, want 1:\n%s", len(got), strings.Join(got, "\n"))
			}
			waitForLog(t, d, "msg=summary", `"hits.attachments.would reject"=`)
			if got := d.lines("msg=summary", `"hits.attachments.would reject"=1`); len(got) != 1 {
				t.Errorf("summary does not count the message once:\n%s", strings.Join(d.lines("msg=summary"), "\n"))
			}
		})
	}
}

// exeThenLongPart is a message whose refused attachment comes first and
// a long part after it: the attachment filter decides during the body.
func exeThenLongPart() string {
	return "From: <sender@example.org>\r\nTo: <user@example.edu>\r\nSubject: files\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: application/octet-stream\r\n" +
		"Content-Disposition: attachment; filename=\"setup.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		base64.StdEncoding.EncodeToString([]byte("MZ not really a program\r\n")) + "\r\n--b1\r\nContent-Type: text/plain\r\n\r\n" +
		strings.Repeat("a line of text to make the message longer than one chunk\r\n", 4000) + "--b1--\r\n"
}
