package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailguard/internal/dovecotauth"
	"mailguard/internal/testserver"
)

func userdbPasswd(mail, fullRule string) string {
	return fmt.Sprintf(`full@example.edu:{PLAIN}x:%[3]d:%[4]d::%[1]s/full::userdb_mail=maildir:%[1]s/full userdb_quota_rule=%[2]s
normal@example.edu:{PLAIN}x:%[3]d:%[4]d::%[1]s/normal::userdb_mail=maildir:%[1]s/normal userdb_quota_rule=*:storage=100K
away@example.edu:{PLAIN}x:%[3]d:%[4]d::%[1]s/away::userdb_mail=maildir:%[1]s/away userdb_quota_rule=*:storage=100K userdb_vacation=yes
`, mail, fullRule, mailUID, mailGID)
}

// TestPostfixQuotaFromDovecotUserdb: the quota filter takes its users
// from a real Dovecot's userdb (a passwd-file with quota_rule extra
// fields), through a real Postfix: a full mailbox is refused at RCPT, an
// unknown user and a user with an auto-reply are passed, and a raised
// quota_rule takes effect once the cache time has passed.
func TestPostfixQuotaFromDovecotUserdb(t *testing.T) {
	port := freePort(t)
	p := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", port), "full@example.edu", "normal@example.edu", "away@example.edu", "stranger@example.edu")
	for user, ms := range map[string]string{"full": "0S\n99000 40\n", "normal": "0S\n1000 1\n", "away": "0S\n99000 40\n"} {
		dir := filepath.Join(p.mail, user)
		for _, sub := range []string{"cur", "new", "tmp"} {
			os.MkdirAll(filepath.Join(dir, sub), 0o700)
		}
		write(t, filepath.Join(dir, "maildirsize"), ms)
		exec.Command("chown", "-R", fmt.Sprintf("%d:%d", mailUID, mailGID), dir).Run()
	}
	dovecot := testserver.StartDovecotAuth(t, userdbPasswd(p.mail, "*:storage=100K"))
	const cache = 3 * time.Second
	d := startMailguardOn(t, port, fmt.Sprintf("listen = \"LISTEN\"\nfilters = [\"virus\", \"quota\"]\n[quota]\nuserdb = %q\nuserdb_cache = %q\n", dovecot.Socket, cache), nil)

	msg := "From: <sender@example.org>\r\nTo: <full@example.edu>\r\nSubject: quota test\r\n\r\nhello\r\n"
	res := smtpSend(t, p.port, "sender@example.org", 0, msg, "full@example.edu", "normal@example.edu", "away@example.edu", "stranger@example.edu")
	if code(res.Rcpts[0]) != 552 || !strings.Contains(res.Rcpts[0][1].(string), "5.2.2 Mailbox full") {
		t.Fatalf("full mailbox (99000 of 100K): RCPT got %v", res.Rcpts[0])
	}
	for i, who := range []string{"normal", "away (vacation)", "stranger (not in the userdb)"} {
		if code(res.Rcpts[i+1]) != 250 {
			t.Fatalf("%s: RCPT got %v", who, res.Rcpts[i+1])
		}
	}
	if code(res.Data) != 250 {
		t.Fatalf("DATA %v", res.Data)
	}
	if got := d.lines("msg=decision", "filter=quota", "rcpt=full@example.edu", "552 5.2.2"); len(got) != 1 {
		t.Errorf("want one decision line for the full mailbox:\n%s", d.logs)
	}

	// The postmaster raises the quota in Dovecot.
	dovecot.SetPasswd(userdbPasswd(p.mail, "*:storage=10M"))
	changed := time.Now()
	direct := &dovecotauth.Client{Path: dovecot.Socket}
	defer direct.Close()
	for i := 0; ; i++ { // Dovecot rereads its passwd-file within a second
		rep, err := direct.Lookup(t.Context(), "full@example.edu")
		if err == nil && rep.Fields["quota_rule"] == "*:storage=10M" {
			break
		}
		if i == 100 {
			t.Fatalf("Dovecot did not reread its passwd-file: %+v %v", rep, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Until(changed.Add(cache + 100*time.Millisecond)))
	if res := smtpSend(t, p.port, "sender@example.org", 0, msg, "full@example.edu"); code(res.Rcpts[0]) != 250 || code(res.Data) != 250 {
		t.Fatalf("after the cache time, with 10M: RCPT %v DATA %v", res.Rcpts[0], res.Data)
	}
	if got := p.delivered(t, "full", 1); len(got) != 1 {
		t.Fatalf("the no longer full mailbox holds %d messages", len(got))
	}
}
