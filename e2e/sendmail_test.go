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
	root := sendmailRoot(t)
	d := startMailguard(t, "listen = \"LISTEN\"\n[virus]\nsignatures = \"signatures\"\n", map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n"})

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
		"FEATURE(`no_default_msa')\nFEATURE(`accept_unresolvable_domains')\nMAILER(`local')\nMAILER(`smtp')\n", cf, dir, port, milterPort(t, d.port, "sendmail")))
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
