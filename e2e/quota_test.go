package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"mailguard/internal/filter/quota"
	"mailguard/internal/maildir"
	"mailguard/internal/userdir"
)

const lda = "/usr/lib/dovecot/dovecot-lda"

// dovecotBox is a Maildir that Dovecot's delivery agent fills under its
// Maildir++ quota backend, run as an ordinary user without a server.
type dovecotBox struct {
	home, conf string
}

func newDovecotBox(t *testing.T, rule string) *dovecotBox {
	t.Helper()
	requireCommands(t, map[string]string{"doveadm": "dovecot-core"})
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("delivering as another user needs root, as CI runs")
		}
		t.Skip("delivering as another user needs root")
	}
	root, err := os.MkdirTemp("/tmp", "mailguard-dovecot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	os.Chmod(root, 0o755)
	b := &dovecotBox{home: filepath.Join(root, "home"), conf: filepath.Join(root, "dovecot.conf")}
	os.Mkdir(b.home, 0o700)
	os.Chown(b.home, mailUID, mailGID)
	write(t, b.conf, fmt.Sprintf(`ssl = no
protocols =
base_dir = %[1]s/run
log_path = %[1]s/home/dovecot.log
mail_location = maildir:%[1]s/home/Maildir
mail_plugins = quota
passdb {
  driver = static
  args = password=unused
}
userdb {
  driver = static
  args = uid=%[2]d gid=%[3]d home=%[1]s/home
}
plugin {
  quota = maildir:User quota
  quota_rule = %[4]s
  # Dovecot lets one message overrun the limit by quota_grace (10%%
  # by default); without it, its boundary is exactly mailguard's.
  quota_grace = 0
}
`, root, mailUID, mailGID, rule))
	return b
}

// deliver hands a message of about size bytes to dovecot-lda; false means
// Dovecot refused it for quota.
func (b *dovecotBox) deliver(t *testing.T, size int) bool {
	t.Helper()
	msg := fmt.Sprintf("From: a@example.org\nTo: alice@example.edu\nSubject: %d\n\n", size)
	for len(msg) < size {
		msg += strings.Repeat("x", min(70, size-len(msg)-1)) + "\n"
	}
	cmd := b.run(lda, "-c", b.conf, "-f", "a@example.org", "-e")
	cmd.Stdin = strings.NewReader(msg)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return true
	}
	if strings.Contains(string(out), "Quota exceeded") {
		return false
	}
	t.Fatalf("dovecot-lda: %v\n%s", err, out)
	return false
}

func (b *dovecotBox) run(name string, args ...string) *exec.Cmd {
	cmd := exec.Command("runuser", append([]string{"-u", "nobody", "--", "env", "HOME=" + b.home, "USER=alice", name}, args...)...)
	return cmd
}

// report is what `doveadm quota get` says: storage in KiB and messages,
// each used and limit.
func (b *dovecotBox) report(t *testing.T) (storage, storageLimit, messages, messageLimit int64) {
	t.Helper()
	out, err := b.run("doveadm", "-c", b.conf, "quota", "get").CombinedOutput()
	if err != nil {
		t.Fatalf("doveadm quota get: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		value, _ := strconv.ParseInt(f[3], 10, 64)
		limit, _ := strconv.ParseInt(f[4], 10, 64)
		switch f[2] {
		case "STORAGE":
			storage, storageLimit = value, limit
		case "MESSAGE":
			messages, messageLimit = value, limit
		}
	}
	return
}

// TestDovecotMaildirsize: mailguard reads the usage and limits Dovecot
// reports from the maildirsize Dovecot keeps, and refuses exactly the
// messages Dovecot itself would refuse.
func TestDovecotMaildirsize(t *testing.T) {
	b := newDovecotBox(t, "*:storage=64K:messages=30")
	maildirPath := filepath.Join(b.home, "Maildir")
	users, err := userdir.Parse("users", strings.NewReader("alice@example.edu "+maildirPath+"\n"), userdir.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := quota.New(quota.Options{Users: users, Usage: &maildir.UsageReader{}, Margin: 0})

	sizes := []int{3000, 9000, 500, 12000, 4000, 7000, 2500, 15000, 1000, 6000, 8000, 3000, 20000, 700, 5000}
	delivered := 0
	for i := 0; i < 60; i++ {
		size := sizes[i%len(sizes)]
		// Ask mailguard first: delivering changes the answer.
		refuse := delivered > 0 && f.Decide("alice@example.edu", int64(size)).Final()
		accepted := b.deliver(t, size)
		if delivered > 0 && refuse == accepted {
			t.Fatalf("message %d of %d bytes: Dovecot accepted=%v, mailguard would refuse=%v", i, size, accepted, refuse)
		}
		if accepted {
			delivered++
		}
		if delivered == 0 {
			continue
		}
		storage, storageLimit, messages, messageLimit := b.report(t)
		u, ok := (&maildir.UsageReader{}).Usage(maildirPath)
		if !ok || u.FromScan {
			t.Fatalf("mailguard did not read Dovecot's maildirsize: %+v %v", u, ok)
		}
		// doveadm shows KiB, rounded.
		kib := u.Bytes / 1024
		if (storage != kib && storage != kib+1) || u.Def.Bytes/1024 != storageLimit || u.Count != messages || u.Def.Count != messageLimit {
			t.Fatalf("Dovecot reports %d/%d KiB, %d/%d messages; mailguard read %d/%d bytes, %d/%d messages",
				storage, storageLimit, messages, messageLimit, u.Bytes, u.Def.Bytes, u.Count, u.Def.Count)
		}
	}
	if delivered == 0 || delivered == 60 {
		t.Fatalf("the mailbox never filled (%d delivered)", delivered)
	}
	// The same totals by counting the files Dovecot wrote.
	counted, err := maildir.Count(t.Context(), maildirPath)
	u, _ := (&maildir.UsageReader{}).Usage(maildirPath)
	if err != nil || counted != u.Totals {
		t.Fatalf("counting the files gives %+v (%v), maildirsize %+v", counted, err, u.Totals)
	}
}

type smtpResult struct {
	Mail  []any   `json:"mail"`
	Rcpts [][]any `json:"rcpts"`
	Data  []any   `json:"data"`
}

func smtpSend(t *testing.T, port int, sender string, size int, data string, rcpts ...string) smtpResult {
	t.Helper()
	requireCommands(t, map[string]string{"python3": "python3"})
	file := filepath.Join(t.TempDir(), "msg")
	write(t, file, data)
	_, self, _, _ := runtime.Caller(0)
	args := []string{filepath.Join(filepath.Dir(self), "testdata", "smtp_send.py"), "--port", fmt.Sprint(port), "--sender", sender, "--data", file, "--size", fmt.Sprint(size)}
	for _, r := range rcpts {
		args = append(args, "--rcpt", r)
	}
	out, err := exec.Command("python3", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("smtp_send.py: %v\n%s", err, out)
	}
	var res smtpResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return res
}

func code(reply []any) int {
	if len(reply) == 0 {
		return 0
	}
	return int(reply[0].(float64))
}

func TestPostfixQuota(t *testing.T) {
	port := freePort(t)
	p := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", port), "full@example.edu", "normal@example.edu", "nearly@example.edu")
	for user, ms := range map[string]string{
		"full":   "100000S,1000C\n99000 40\n",
		"normal": "100000S,1000C\n1000 1\n",
		"nearly": "100000S,1000C\n60000 20\n", // 40,000 bytes left
	} {
		dir := filepath.Join(p.mail, user)
		for _, sub := range []string{"cur", "new", "tmp"} {
			os.MkdirAll(filepath.Join(dir, sub), 0o700)
		}
		write(t, filepath.Join(dir, "maildirsize"), ms)
		exec.Command("chown", "-R", fmt.Sprintf("%d:%d", mailUID, mailGID), dir).Run()
	}
	users := fmt.Sprintf("full@example.edu %[1]s/full\nnormal@example.edu %[1]s/normal\nnearly@example.edu %[1]s/nearly\n", p.mail)
	d := startMailguardOn(t, port, "listen = \"LISTEN\"\nfilters = [\"virus\", \"quota\"]\n[quota]\nusers = \"users\"\n",
		map[string]string{"users": users})

	msg := "From: <sender@example.org>\r\nTo: <full@example.edu>, <normal@example.edu>\r\nSubject: quota test\r\n\r\nhello\r\n"
	res := smtpSend(t, p.port, "sender@example.org", 0, msg, "full@example.edu", "normal@example.edu")
	if code(res.Rcpts[0]) != 552 || !strings.Contains(res.Rcpts[0][1].(string), "5.2.2 Mailbox full") {
		t.Fatalf("full mailbox: RCPT got %v", res.Rcpts[0])
	}
	if code(res.Rcpts[1]) != 250 || code(res.Data) != 250 {
		t.Fatalf("normal mailbox: RCPT %v, DATA %v", res.Rcpts[1], res.Data)
	}
	if got := p.delivered(t, "normal", 1); len(got) != 1 {
		t.Fatalf("normal mailbox holds %d messages", len(got))
	}
	if got := p.delivered(t, "full", 0); len(got) != 0 {
		t.Fatalf("the full mailbox received %d messages", len(got))
	}

	// SIZE= larger than the room left: refused; smaller: accepted.
	if res := smtpSend(t, p.port, "sender@example.org", 50000, msg, "nearly@example.edu"); code(res.Rcpts[0]) != 552 {
		t.Fatalf("SIZE=50000 with 40000 left: %v", res.Rcpts[0])
	}
	if res := smtpSend(t, p.port, "sender@example.org", 30000, msg, "nearly@example.edu"); code(res.Rcpts[0]) != 250 {
		t.Fatalf("SIZE=30000 with 40000 left: %v", res.Rcpts[0])
	}

	// Bounces and the postmaster get through to a full mailbox.
	for _, sender := range []string{"", "postmaster@example.org", "MAILER-DAEMON@mx.example.org"} {
		if res := smtpSend(t, p.port, sender, 0, msg, "full@example.edu"); code(res.Rcpts[0]) != 250 || code(res.Data) != 250 {
			t.Fatalf("sender %q to a full mailbox: RCPT %v DATA %v", sender, res.Rcpts[0], res.Data)
		}
	}
	if got := p.delivered(t, "full", 3); len(got) != 3 {
		t.Fatalf("full mailbox got %d of the 3 exempt messages", len(got))
	}
	if got := d.lines("msg=decision", "filter=quota", "rcpt=full@example.edu", "552 5.2.2"); len(got) != 1 {
		t.Errorf("want one decision line for the full mailbox:\n%s", d.logs)
	}
}
