package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/d--j/go-milter"
)

func TestPostfixSenders(t *testing.T) {
	port := freePort(t)
	p := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", port), "alice@example.edu", "bob@example.edu")
	d := startMailguardOn(t, port, "listen = \"LISTEN\"\nfilters = [\"senders\"]\n[senders]\nblocklist = \"blocklist\"\n",
		map[string]string{"blocklist": "alice@example.edu spammer@example.com\nalice@example.edu @pest.example\nbob@example.edu @pest.example\n"})

	msg := func(from, subject string) string {
		return fmt.Sprintf("From: %s\r\nTo: alice@example.edu, bob@example.edu\r\nSubject: %s\r\n\r\nhello\r\n", from, subject)
	}
	// Envelope sender blocked by alice only: alice refused at RCPT, bob gets it.
	res := smtpSend(t, p.port, "spammer@example.com", 0, msg("<spammer@example.com>", "one"), "alice@example.edu", "bob@example.edu")
	if code(res.Rcpts[0]) != 550 || !strings.Contains(res.Rcpts[0][1].(string), "5.7.1") || code(res.Rcpts[1]) != 250 || code(res.Data) != 250 {
		t.Fatalf("envelope sender: %+v", res)
	}
	// Header From: blocked by every recipient: the message is refused.
	res = smtpSend(t, p.port, "bulk@mailer.example", 0, msg(`"Pest" <news@pest.example>`, "two"), "alice@example.edu", "bob@example.edu")
	if code(res.Data) != 550 || !strings.Contains(fmt.Sprint(res.Data[1]), "5.7.1") {
		t.Fatalf("header From: blocked by all: %+v", res)
	}
	// Header From: blocked by alice only: delivered to bob alone.
	res = smtpSend(t, p.port, "bulk@mailer.example", 0, msg("Spam =?utf-8?q?K=C3=B6nig?= <spammer@example.com>", "three"), "alice@example.edu", "bob@example.edu")
	if code(res.Rcpts[0]) != 250 || code(res.Rcpts[1]) != 250 || code(res.Data) != 250 {
		t.Fatalf("header From: blocked by some: %+v", res)
	}
	bob := p.delivered(t, "bob", 2)
	alice := p.delivered(t, "alice", 0)
	if len(bob) != 2 || len(alice) != 0 {
		t.Fatalf("bob has %d messages (want 2), alice %d (want 0)", len(bob), len(alice))
	}
	if got := d.lines("msg=decision", "filter=senders", `verdict="remove recipient"`, "rcpt=alice@example.edu"); len(got) != 1 {
		t.Errorf("no log line for the removed recipient:\n%s", d.logs)
	}
}

// A From: that does not parse, as Postfix hands it over, is still judged
// by the address a mail client shows of it: each is refused.
func TestPostfixSendersMalformedFrom(t *testing.T) {
	port := freePort(t)
	p := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", port), "alice@example.edu")
	startMailguardOn(t, port, "listen = \"LISTEN\"\nfilters = [\"senders\"]\n[senders]\nblocklist = \"blocklist\"\n",
		map[string]string{"blocklist": "alice@example.edu @pest.example\n"})
	forms := []string{
		"Pest <news@pest.example>>",
		"news@pest.example;",
		"Pest <news@pest.example> (unclosed comment",
		"(Pest news@pest.example",
		`"Pest <news@pest.example>`,
		"Pest, Inc. <news@pest.example>",
		"=?utf-8?q?news=40pest.example?=",
	}
	passed := 0
	for i, from := range forms {
		msg := fmt.Sprintf("From: %s\r\nTo: alice@example.edu\r\nSubject: form %d\r\n\r\nhello\r\n", from, i)
		res := smtpSend(t, p.port, "bulk@mailer.example", 0, msg, "alice@example.edu")
		if code(res.Data) != 550 {
			passed++
			t.Errorf("From: %s: %+v", from, res)
		}
	}
	t.Logf("%d of %d malformed From: forms passed the blocklist", passed, len(forms))
	if got := p.delivered(t, "alice", 0); len(got) != passed {
		t.Errorf("alice has %d messages, want %d", len(got), passed)
	}
}

// TestCaptureUnderLoad: 1,000 messages from 50 milter connections at once
// give 1,000 complete copies with distinct names and nothing partial.
func TestCaptureUnderLoad(t *testing.T) {
	d := startMailguard(t, "listen = \"LISTEN\"\nfilters = [\"capture\"]\n[capture]\nswitch = \"capture.on\"\ndir = \"copies\"\n",
		map[string]string{"capture.on": ""})
	const conns, perConn = 50, 20
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := milter.NewClient("tcp", fmt.Sprintf("127.0.0.1:%d", d.port))
			s, err := client.Session(milter.NewMacroBag())
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			s.Conn("mx.example.org", milter.FamilyInet, 25, "192.0.2.9")
			s.Helo("mx.example.org")
			for i := 0; i < perConn; i++ {
				id := fmt.Sprintf("c%02dm%02d", c, i)
				body := strings.Repeat(id+" line of the message body\r\n", 3000) + "END " + id + "\r\n"
				for _, step := range []func() (*milter.Action, error){
					func() (*milter.Action, error) { return s.Mail("a@example.org", "") },
					func() (*milter.Action, error) { return s.Rcpt("u@example.edu", "") },
					func() (*milter.Action, error) { return s.DataStart() },
					func() (*milter.Action, error) { return s.HeaderField("Subject", id, nil) },
					func() (*milter.Action, error) { return s.HeaderEnd() },
				} {
					if _, err := step(); err != nil {
						errs <- err
						return
					}
				}
				for j := 0; j < len(body); j += 65535 {
					if _, err := s.BodyChunk([]byte(body[j:min(j+65535, len(body))])); err != nil {
						errs <- err
						return
					}
				}
				if _, act, err := s.End(); err != nil || act.StopProcessing() {
					errs <- fmt.Errorf("end: %v %+v", err, act)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	dir := filepath.Join(d.dir, "copies")
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Fatalf("%d partial copies in tmp/", len(tmp))
	}
	entries, err := os.ReadDir(filepath.Join(dir, "new"))
	if err != nil || len(entries) != conns*perConn {
		t.Fatalf("%d copies, want %d (%v)", len(entries), conns*perConn, err)
	}
	seen := map[string]bool{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, "new", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		i := strings.Index(text, "Subject: ")
		id := text[i+9 : i+15]
		if seen[id] || !strings.HasSuffix(text, "END "+id+"\r\n") {
			t.Fatalf("copy %s: duplicate or incomplete (%s)", e.Name(), id)
		}
		seen[id] = true
	}
}

// TestPostfixCapture: a copy captured through Postfix records the client's
// HELO and Postfix's queue id, so it can be matched to the mail log, and
// scan reads that envelope back.
func TestPostfixCapture(t *testing.T) {
	port := freePort(t)
	p := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", port), "user@example.edu")
	d := startMailguardOn(t, port, "listen = \"LISTEN\"\nfilters = [\"capture\"]\n[capture]\nswitch = \"capture.on\"\ndir = \"copies\"\n",
		map[string]string{"capture.on": ""})
	file := filepath.Join(t.TempDir(), "msg")
	os.WriteFile(file, []byte("From: <sender@example.org>\r\nSubject: copy me\r\n\r\nhello\r\n"), 0o644)
	out, _ := exec.Command("swaks", "--server", "127.0.0.1", "--port", fmt.Sprint(p.port), "--helo", "client.example.org",
		"--from", "sender@example.org", "--to", "user@example.edu", "--data", file, "--timeout", "60").CombinedOutput()
	if !strings.Contains(string(out), "<-  250 2.0.0") {
		t.Fatalf("not accepted:\n%s", tail(string(out)))
	}
	p.delivered(t, "user", 1)
	var copies []os.DirEntry
	for i := 0; i < 100 && len(copies) == 0; i++ {
		copies, _ = os.ReadDir(filepath.Join(d.dir, "copies", "new"))
		time.Sleep(50 * time.Millisecond)
	}
	if len(copies) != 1 {
		t.Fatalf("%d copies", len(copies))
	}
	path := filepath.Join(d.dir, "copies", "new", copies[0].Name())
	b, _ := os.ReadFile(path)
	text := string(b)
	if !strings.Contains(text, "X-Envelope-Helo: client.example.org\r\n") {
		t.Errorf("no X-Envelope-Helo:\n%s", text)
	}
	i := strings.Index(text, "X-Envelope-Queue-ID: ")
	if i < 0 {
		t.Fatalf("no X-Envelope-Queue-ID:\n%s", text)
	}
	id := strings.TrimSpace(strings.SplitN(text[i+len("X-Envelope-Queue-ID: "):], "\r\n", 2)[0])
	maillog, _ := os.ReadFile(filepath.Join(p.dir, "maillog"))
	if id == "" || !strings.Contains(string(maillog), id+": ") {
		t.Errorf("queue id %q is not Postfix's:\n%s", id, maillog)
	}
	scanOut, _ := exec.Command(filepath.Join(binDir, "mailguard"), "scan", path).CombinedOutput()
	if !strings.Contains(string(scanOut), ": accept") {
		t.Errorf("scan of the copy: %s", scanOut)
	}
}
