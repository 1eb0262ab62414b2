package e2e

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mailguard/internal/testserver"
)

// eicarMessage carries the EICAR test file as a base64 attachment of a
// multipart message: clamd finds it only through the top-level
// Content-Type, so it must see the header as the MTA received it.
func eicarMessage() string {
	return "From: <sender@example.org>\r\nTo: <user@example.edu>\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nPlease find the invoice attached.\r\n" +
		"--b1\r\nContent-Type: application/octet-stream; name=\"invoice.com\"\r\nContent-Transfer-Encoding: base64\r\n" +
		"Content-Disposition: attachment; filename=\"invoice.com\"\r\n\r\n" +
		base64.StdEncoding.EncodeToString([]byte(testserver.EICAR)) + "\r\n--b1--\r\n"
}

// feedFile is a file a threat feed lists by its SHA-256.
const feedFile = "a file a threat feed lists\r\n"

func attachmentMessage(name, data string) string {
	return "From: <sender@example.org>\r\nTo: <user@example.edu>\r\nSubject: files\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: application/octet-stream\r\n" +
		"Content-Disposition: attachment; filename=\"" + name + "\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		base64.StdEncoding.EncodeToString([]byte(data)) + "\r\n--b1--\r\n"
}

func TestPostfixClamav(t *testing.T) {
	clamd := testserver.StartClamd(t, testserver.ClamdOptions{})
	d := startMailguard(t, `listen = "LISTEN"
filters = ["virus", "attachments", "clamav"]
[virus]
signatures = "signatures"
[attachments]
block_names = ["*.scr"]
hashes = ["bad.hsb"]
[clamav]
address = "`+clamd.Address()+`"
clamd_config = "`+clamd.Conf+`"
add_headers = "replace"
`, map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n",
		"bad.hsb": fmt.Sprintf("%x:%d:Feed.Test.File\n", sha256.Sum256([]byte(feedFile)), len(feedFile))})
	p := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", milterPort(t, d.port, "postfix")), "user@example.edu")
	send := func(t *testing.T, data string) string {
		file := filepath.Join(t.TempDir(), "msg")
		if err := os.WriteFile(file, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p.swaks(t, "sender@example.org", "user@example.edu", file)
	}

	out := send(t, "From: <sender@example.org>\r\nX-Virus-Status: Clean\r\nSubject: hello\r\n\r\nhello\r\n")
	if !strings.Contains(out, "<-  250 2.0.0") {
		t.Fatalf("clean message not accepted:\n%s", tail(out))
	}
	msgs := p.delivered(t, "user", 1)
	if len(msgs) != 1 || !strings.Contains(msgs[0], "X-Virus-Scanned: ClamAV using mailguard") ||
		strings.Count(msgs[0], "X-Virus-Status:") != 1 || !strings.Contains(msgs[0], "X-Virus-Status: Clean\r\n") && !strings.Contains(msgs[0], "X-Virus-Status: Clean\n") {
		t.Fatalf("delivered message's headers:\n%v", msgs)
	}

	out = send(t, eicarMessage())
	if !strings.Contains(out, "<** 550 5.7.0 VIRUS FOUND: "+testserver.EICARName) {
		t.Fatalf("EICAR attachment not refused with its name:\n%s", tail(out))
	}
	out = send(t, message("worm", 200, 100, ""))
	if !strings.Contains(out, "<** 550 5.7.0 VIRUS FOUND") {
		t.Fatalf("worm not refused:\n%s", tail(out))
	}
	if l := d.lines("decision", "filter=virus", "WORM_SOBIG.B"); len(l) != 1 {
		t.Fatalf("the signature filter did not decide the worm:\n%s", d.logs)
	}

	// The attachment filter: a name, and a hash from a feed.
	out = send(t, attachmentMessage("cute.scr", "harmless bytes"))
	if !strings.Contains(out, "<** 550 5.7.0 Attachment refused: cute.scr") {
		t.Fatalf(".scr attachment not refused:\n%s", tail(out))
	}
	out = send(t, attachmentMessage("report.doc", feedFile))
	if !strings.Contains(out, "<** 550 5.7.0 Attachment refused: report.doc") {
		t.Fatalf("hash-listed attachment not refused:\n%s", tail(out))
	}
	if l := d.lines("decision", "filter=attachments", "Feed.Test.File"); len(l) != 1 {
		t.Fatalf("no decision line naming the feed's entry:\n%s", d.logs)
	}

	clamd.Stop()
	out = send(t, eicarMessage())
	if !strings.Contains(out, "<** 451 4.3.0") {
		t.Fatalf("with clamd stopped, not 451 4.3.0:\n%s", tail(out))
	}
	if l := d.lines("filter failed", "filter=clamav"); len(l) == 0 {
		t.Fatalf("clamd's failure not logged:\n%s", d.logs)
	}
	if got := len(p.delivered(t, "user", 1)); got != 1 {
		t.Fatalf("%d messages delivered, want only the clean one", got)
	}
}

// A threat feed's new hash list takes effect on SIGHUP; a broken one
// keeps the running list, and the log names its file and line.
func TestAttachmentHashesReload(t *testing.T) {
	body := "a file a feed will list tomorrow\r\n"
	listed := func(data string) string {
		return fmt.Sprintf("%x:%d:Feed.Tomorrow\n", sha256.Sum256([]byte(data)), len(data))
	}
	d := startMailguard(t, "listen = \"LISTEN\"\nfilters = [\"attachments\"]\n[attachments]\nhashes = [\"feed.hsb\"]\n",
		map[string]string{"feed.hsb": listed("something else\r\n")})
	feed := filepath.Join(d.dir, "feed.hsb")
	if r := milterVerdict(t, d.port, body); r != "" {
		t.Fatalf("refused before it was listed: %q", r)
	}
	os.WriteFile(feed, []byte(listed("something else\r\n")+listed(body)), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitForLog(t, d, "msg=reloaded", "2 hashes from 1 files")
	if r := milterVerdict(t, d.port, body); !strings.HasPrefix(r, "550 5.7.0 Attachment refused") {
		t.Fatalf("not refused after the reload: %q", r)
	}
	os.WriteFile(feed, []byte(listed(body)+"not-a-hash:1:x\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitForLog(t, d, "reload failed", "feed.hsb:2: hash \\\"not-a-hash\\\" is not hexadecimal")
	if r := milterVerdict(t, d.port, body); !strings.HasPrefix(r, "550 5.7.0") {
		t.Fatalf("a broken list dropped the running one: %q", r)
	}
}

// Two real clamds, one hung (SIGSTOP): it still accepts connections and
// takes streams, but answers nothing. The messages streamed to it before
// it is found out get 451 at their timeout; it is then left out (and the
// log says so), and the next batches all go to the other clamd, also
// after its time out is over, since it does not answer a PING.
func TestClamdHungRoutedAround(t *testing.T) {
	a := testserver.StartClamd(t, testserver.ClamdOptions{})
	b := testserver.StartClamd(t, testserver.ClamdOptions{})
	d := startMailguard(t, `listen = "LISTEN"
filters = ["clamav"]
[clamav]
address = "`+a.Address()+`, `+b.Address()+`"
clamd_config = ""
timeout = "8s"
`, nil)
	batch := func(n int) (refused []string) {
		var (
			wg sync.WaitGroup
			mu sync.Mutex
		)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				reply, err := milterSessionErr(d.port, fmt.Sprintf("192.0.2.%d", i+1), "hello\r\n")
				if err != nil || reply != "" {
					mu.Lock()
					refused = append(refused, fmt.Sprintf("%q %v", reply, err))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return refused
	}
	const n = 16
	if r := batch(n); len(r) != 0 {
		t.Fatalf("both clamds up: refused %v", r)
	}
	b.Hang()
	start := time.Now()
	r := batch(n)
	t.Logf("batch 1, one clamd hung: %d messages in %s, %d refused", n, time.Since(start), len(r))
	waitForLog(t, d, "clamd left out", b.Socket)
	for i := 2; i <= 3; i++ {
		start := time.Now()
		if r := batch(n); len(r) != 0 {
			t.Fatalf("batch %d: %d of %d refused: %v", i, len(r), n, r)
		}
		t.Logf("batch %d: %d messages in %s, none refused", i, n, time.Since(start))
	}
	time.Sleep(11 * time.Second) // past the 10 s it is left out for
	if r := batch(n); len(r) != 0 {
		t.Fatalf("after its time out: %d of %d refused: %v", len(r), n, r)
	}
	// Resumed, it is back once its time out is over and a message
	// sets off the PING.
	b.Resume()
	for deadline := time.Now().Add(30 * time.Second); len(d.lines("clamd back", b.Socket)) == 0; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the resumed clamd never came back:\n%s", d.logs)
		}
		if r := batch(1); len(r) != 0 {
			t.Fatalf("refused %v", r)
		}
	}
}
