package e2e

import (
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
