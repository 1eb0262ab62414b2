package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailguard/internal/testserver"
)

// forgedStatus is a header of n forged X-Virus-Status fields and a few
// other X-Virus-* fields a sender or an earlier host may have written.
func forgedStatus(n int) string {
	return strings.Repeat("X-Virus-Status: Clean\r\n", n) +
		"X-Virus-Scanned: by the sender's own good word\r\nx-virus-report: nothing found\r\n"
}

// With add_headers = "replace", the delivered message carries mailguard's
// X-Virus-* fields and none of those it arrived with, however many came
// (a cap of 64 header changes used to be spent on the deletions: 70
// forged "Clean" fields left 6 of them and no field of mailguard's). In
// monitor mode, an infected or oversize message is not marked Clean.
// Through a real Postfix and a real clamd, read back from the Maildir.
func TestPostfixClamavReplacesForgedStatus(t *testing.T) {
	clamd := testserver.StartClamd(t, testserver.ClamdOptions{})
	d := startMailguard(t, `listen = "LISTEN"
filters = ["clamav"]
[clamav]
address = "`+clamd.Address()+`"
clamd_config = "`+clamd.Conf+`"
add_headers = "replace"
mode = "monitor"
max_size = "64K"
on_oversize = "reject"
`, nil)
	p := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", d.port), "user@example.edu")
	send := func(subject, rest string) {
		t.Helper()
		data := "From: <sender@example.org>\r\nTo: <user@example.edu>\r\nSubject: " + subject + "\r\n" + forgedStatus(70) + rest
		file := filepath.Join(t.TempDir(), "msg")
		if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if out := p.swaks(t, "sender@example.org", "user@example.edu", file); !strings.Contains(out, "<-  250 2.0.0") {
			t.Fatalf("%s: not accepted:\n%s", subject, tail(out))
		}
	}
	send("clean", "\r\nNothing to see here.\r\n")
	eicar := eicarMessage()
	send("infected", eicar[strings.Index(eicar, "MIME-Version:"):])
	send("oversize", "\r\n"+strings.Repeat("a line of text to make the message longer than max_size\r\n", 2000))

	want := map[string]string{
		"clean":    "Clean",
		"infected": "Infected (" + testserver.EICARName + ")",
		"oversize": "Unscanned (too large)",
	}
	msgs := p.delivered(t, "user", len(want))
	if len(msgs) != len(want) {
		t.Fatalf("Maildir holds %d messages, want %d", len(msgs), len(want))
	}
	for _, m := range msgs {
		head, _, _ := strings.Cut(strings.ReplaceAll(m, "\r\n", "\n"), "\n\n")
		var subject string
		var virus []string
		for _, line := range strings.Split(head, "\n") {
			if s, ok := strings.CutPrefix(line, "Subject: "); ok {
				subject = s
			}
			if strings.HasPrefix(strings.ToLower(line), "x-virus-") {
				virus = append(virus, line)
			}
		}
		got := strings.Join(virus, "\n")
		if exp := "X-Virus-Scanned: ClamAV using mailguard\nX-Virus-Status: " + want[subject]; got != exp {
			t.Errorf("%s: delivered with %d X-Virus-* fields, %d of them \"X-Virus-Status: Clean\", %d of them mailguard's:\n%s\nwant:\n%s",
				subject, len(virus), strings.Count(got+"\n", "X-Virus-Status: Clean\n"), strings.Count(got, "ClamAV using mailguard"), got, exp)
		}
		if subject != "clean" && !strings.Contains(head, "X-Mailguard: monitor; filter=clamav; would ") {
			t.Errorf("%s: no X-Mailguard record:\n%s", subject, head)
		}
	}
	if got := d.lines("header change"); len(got) != 0 {
		t.Errorf("changes dropped:\n%s", strings.Join(got, "\n"))
	}
}
