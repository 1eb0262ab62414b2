package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailguard/internal/testserver"
)

// sendmailRoot unpacks Debian's Sendmail into a folder of the test's own:
// its package conflicts with Postfix's, so it cannot be installed beside it.
func sendmailRoot(t *testing.T) string {
	t.Helper()
	requireCommands(t, map[string]string{"m4": "m4", "swaks": "swaks"})
	root := "/tmp/mailguard-e2e-sendmail"
	bin := filepath.Join(root, "root/usr/libexec/sendmail/sendmail")
	if _, err := os.Stat(bin); err == nil {
		return root
	}
	fail := t.Skipf
	if os.Getenv("CI") != "" {
		fail = t.Fatalf
	}
	if os.Geteuid() != 0 {
		fail("unpacking Sendmail needs root")
	}
	debs := filepath.Join(root, "debs")
	os.MkdirAll(debs, 0o755)
	download := func() error {
		cmd := exec.Command("apt-get", "download", "sendmail-bin", "sendmail-base", "sendmail-cf")
		cmd.Dir = debs
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	if err := download(); err != nil {
		// The package lists may be missing on a fresh machine.
		if uerr := run(t, nil, "apt-get", "update", "-q"); uerr != nil {
			fail("apt-get update: %v", uerr)
		}
		if err := download(); err != nil {
			fail("apt-get download sendmail: %v", err)
		}
	}
	files, _ := filepath.Glob(filepath.Join(debs, "*.deb"))
	for _, f := range files {
		if err := run(t, nil, "dpkg", "-x", f, filepath.Join(root, "root")); err != nil {
			fail("%v", err)
		}
	}
	return root
}

func TestSendmailVirus(t *testing.T) {
	d := startMailguard(t, "listen = \"LISTEN\"\n[virus]\nsignatures = \"signatures\"\n", map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n"})
	port := startSendmail(t, milterPort(t, d.port, "sendmail"), "")

	smtp := &postfix{port: port} // swaks needs only the port
	for _, c := range virusCases() {
		t.Run(c.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "msg")
			write(t, file, c.data)
			checkVirusReply(t, c, smtp.swaks(t, "sender@example.org", "user@example.edu", file))
		})
	}
	// Sendmail's queue id, sent with the MAIL macros, is in every decision line.
	lines := d.lines("msg=decision", "reason=WORM_SOBIG.B")
	if len(lines) != 4 {
		t.Fatalf("%d decision lines, want 4:\n%s", len(lines), d.logs)
	}
	for _, l := range lines {
		if !strings.Contains(l, "mail.queue_id=") {
			t.Errorf("no queue id: %s", l)
		}
	}
}

// startSendmail runs Debian's Sendmail on a free loopback port with
// mailguard on milterPort as its filter, and returns the port. extraMc
// goes into its .mc file before the mailers.
func startSendmail(t *testing.T, milterPort int, extraMc string) int {
	t.Helper()
	root := sendmailRoot(t)
	dir, err := os.MkdirTemp("/tmp", "mailguard-sendmail-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, sub := range []string{"queue", "mspqueue"} {
		os.MkdirAll(filepath.Join(dir, sub), 0o700)
	}
	write(t, filepath.Join(dir, "aliases"), "")
	port := freePort(t)
	cf := root + "/root/usr/share/sendmail/cf/"
	write(t, filepath.Join(dir, "x.mc"), fmt.Sprintf("divert(-1)\ninclude(`%[1]sm4/cf.m4')\ndivert(0)\nOSTYPE(`linux')\n"+
		"define(`QUEUE_DIR', `%[2]s/queue')\ndefine(`MSP_QUEUE_DIR', `%[2]s/mspqueue')\ndefine(`confPID_FILE', `%[2]s/sendmail.pid')\n"+
		"define(`ALIAS_FILE', `%[2]s/aliases')\ndefine(`confDONT_PROBE_INTERFACES', `True')\ndefine(`confDOMAIN_NAME', `mx.test.example')\n"+
		"DAEMON_OPTIONS(`Port=%[3]d, Addr=127.0.0.1, Name=MTA')\n"+
		"INPUT_MAIL_FILTER(`mailguard', `S=inet:%[4]d@127.0.0.1, F=T, T=S:30s;R:30s;E:5m')\n"+
		"FEATURE(`no_default_msa')\nFEATURE(`accept_unresolvable_domains')\n%[5]sMAILER(`local')\nMAILER(`smtp')\n", cf, dir, port, milterPort, extraMc))
	m4 := exec.Command("m4", "-D_CF_DIR_="+cf, filepath.Join(dir, "x.mc"))
	cfText, err := m4.Output()
	if err != nil {
		t.Fatalf("m4: %v", err)
	}
	write(t, filepath.Join(dir, "x.cf"), string(cfText))
	// The daemon forks and keeps its parent's output open: give it a file,
	// not a pipe, or waiting for the parent waits for the daemon.
	smLog, err := os.Create(filepath.Join(dir, "sendmail.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer smLog.Close()
	// Sendmail sleeps a minute at start when the host name has no domain;
	// give it a qualified one in a UTS namespace of its own.
	sm := exec.Command("unshare", "--uts", "sh", "-c", `hostname mx.test.example && exec "$0" "$@"`,
		filepath.Join(root, "root/usr/libexec/sendmail/sendmail"), "-C", filepath.Join(dir, "x.cf"), "-bd", "-q30m")
	sm.Stdout, sm.Stderr = smLog, smLog
	if err := sm.Run(); err != nil {
		out, _ := os.ReadFile(smLog.Name())
		t.Fatalf("sendmail: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		b, _ := os.ReadFile(filepath.Join(dir, "sendmail.pid"))
		var pid int
		fmt.Sscan(strings.SplitN(string(b), "\n", 2)[0], &pid)
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 50 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		}
		// Whatever else runs with this test's configuration goes too.
		exec.Command("pkill", "-f", filepath.Join(dir, "x.cf")).Run()
	})
	waitForPort(t, port, "sendmail", func() string {
		out, _ := os.ReadFile(smLog.Name())
		return string(out)
	})

	return port
}

// TestSendmailDeliveryFilters: every filter that changes delivery works
// through Sendmail as through Postfix. Sendmail relays what it accepts to
// a private Postfix (no milter) that delivers into Maildirs, so the test
// sees who got the message: the quota filter's refusal at RCPT, the
// senders filter's removal of one recipient at the end of the message,
// and the clamav filter's refusal.
func TestSendmailDeliveryFilters(t *testing.T) {
	clamd := testserver.StartClamd(t, testserver.ClamdOptions{})
	relay := startPostfixConf(t, false, "myhostname = relay.test.example\n", "",
		"alice@example.edu", "bob@example.edu", "full@example.edu", "normal@example.edu")
	quotaDir := t.TempDir()
	for user, ms := range map[string]string{"full": "100000S,1000C\n99000 40\n", "normal": "100000S,1000C\n1000 1\n"} {
		for _, sub := range []string{"cur", "new", "tmp"} {
			os.MkdirAll(filepath.Join(quotaDir, user, sub), 0o700)
		}
		write(t, filepath.Join(quotaDir, user, "maildirsize"), ms)
	}
	d := startMailguard(t, `listen = "LISTEN"
filters = ["quota", "senders", "clamav"]
[quota]
users = "users"
[senders]
blocklist = "blocklist"
[clamav]
address = "`+clamd.Address()+`"
clamd_config = "`+clamd.Conf+`"
`, map[string]string{
		"users":     fmt.Sprintf("full@example.edu %[1]s/full\nnormal@example.edu %[1]s/normal\n", quotaDir),
		"blocklist": "alice@example.edu @pest.example\n",
	})
	// Sendmail relays everything for example.edu to the Postfix above.
	port := startSendmail(t, milterPort(t, d.port, "sendmail"),
		"define(`SMART_HOST', `esmtp:[127.0.0.1]')\ndefine(`ESMTP_MAILER_ARGS', `TCP $h "+fmt.Sprint(relay.port)+"')\n")

	// quota: the full mailbox refused at RCPT, the other one delivered.
	msg := "From: <sender@example.org>\r\nTo: <full@example.edu>, <normal@example.edu>\r\nSubject: quota\r\n\r\nhello\r\n"
	res := smtpSend(t, port, "sender@example.org", 0, msg, "full@example.edu", "normal@example.edu")
	if code(res.Rcpts[0]) != 552 || !strings.Contains(res.Rcpts[0][1].(string), "5.2.2 Mailbox full") || code(res.Rcpts[1]) != 250 || code(res.Data) != 250 {
		t.Fatalf("quota through Sendmail: %+v", res)
	}

	// senders: alice blocks the header From:'s domain, bob does not: the
	// message reaches bob alone.
	msg = "From: \"Pest\" <news@pest.example>\r\nTo: alice@example.edu, bob@example.edu\r\nSubject: senders\r\n\r\nhello\r\n"
	res = smtpSend(t, port, "bulk@mailer.example", 0, msg, "alice@example.edu", "bob@example.edu")
	if code(res.Rcpts[0]) != 250 || code(res.Rcpts[1]) != 250 || code(res.Data) != 250 {
		t.Fatalf("senders through Sendmail: %+v", res)
	}

	// clamav: EICAR refused with its name.
	file := filepath.Join(t.TempDir(), "eicar")
	write(t, file, eicarMessage())
	if out := (&postfix{port: port}).swaks(t, "sender@example.org", "normal@example.edu", file); !strings.Contains(out, "<** 550 5.7.0 VIRUS FOUND: "+testserver.EICARName) {
		t.Fatalf("EICAR through Sendmail not refused with its name:\n%s", tail(out))
	}

	if got := relay.delivered(t, "normal", 1); len(got) != 1 || !strings.Contains(got[0], "Subject: quota") {
		t.Errorf("normal's mailbox: %d messages, want the quota test's", len(got))
	}
	if got := relay.delivered(t, "bob", 1); len(got) != 1 || !strings.Contains(got[0], "Subject: senders") {
		t.Errorf("bob's mailbox: %d messages, want the senders test's", len(got))
	}
	// Everything the relay got is done once its queue files are removed.
	for i := 0; ; i++ {
		log, _ := os.ReadFile(filepath.Join(relay.dir, "maillog"))
		if got := strings.Count(string(log), ": removed"); got >= 2 {
			break
		} else if i == 300 {
			t.Fatalf("the relay finished %d of 2 messages:\n%s", got, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, user := range []string{"full", "alice"} {
		if got := relay.delivered(t, user, 0); len(got) != 0 {
			t.Errorf("%s received %d messages through Sendmail, want none", user, len(got))
		}
	}
	if got := d.lines("msg=decision", "filter=senders", `verdict="remove recipient"`, "rcpt=alice@example.edu"); len(got) != 1 {
		t.Errorf("no decision line for the removed recipient:\n%s", d.logs)
	}
	if got := d.lines("msg=decision", "filter=clamav", testserver.EICARName, "mail.queue_id="); len(got) != 1 {
		t.Errorf("no decision line with Sendmail's queue id for the EICAR message:\n%s", d.logs)
	}
}
