package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDebianPackage installs the package scripts/build-deb builds into this
// host, as a postmaster would: dpkg -i, the configuration checked as the
// mailguard user, the daemon run as that user behind a real Postfix, an
// upgrade to a second build while mail flows (nothing lost: the sending
// Postfix retries what was tempfailed while the daemon restarted), then
// dpkg --purge, after which nothing of it is left. No systemd runs here,
// so the test starts and restarts the daemon as the unit would (the
// maintainer scripts leave that to systemctl only where systemd runs).
func TestDebianPackage(t *testing.T) {
	requireCommands(t, map[string]string{"dpkg-deb": "dpkg", "postfix": "postfix", "swaks": "swaks", "sha256sum": "coreutils"})
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("installing a package needs root")
		}
		t.Skip("installing a package needs root")
	}
	if exec.Command("dpkg-query", "-W", "-f=${Status}", "mailguard").Run() == nil {
		t.Fatal("a mailguard package is installed on this host; the test would replace it")
	}
	if exec.Command("id", "mailguard").Run() == nil {
		t.Fatal("a mailguard user exists on this host; the package's purge would remove it")
	}
	_, file, _, _ := runtime.Caller(0)
	repo := filepath.Dir(filepath.Dir(file))
	out := t.TempDir()
	debs := map[string]string{}
	for _, v := range []string{"1.0.0", "1.0.1"} {
		cmd := exec.Command(filepath.Join(repo, "scripts", "build-deb"), v, out)
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("build-deb %s: %v\n%s", v, err, b)
		}
		debs[v] = strings.TrimSpace(string(b[strings.LastIndex(strings.TrimSpace(string(b)), "\n")+1:]))
		check := exec.Command("sha256sum", "--check", filepath.Base(debs[v])+".sha256")
		check.Dir = out
		if b, err := check.CombinedOutput(); err != nil {
			t.Fatalf("checksum of %s: %v\n%s", debs[v], err, b)
		}
	}
	rev, _ := exec.Command("git", "-C", repo, "rev-parse", "HEAD").Output()

	var daemon *installedDaemon
	t.Cleanup(func() {
		daemon.stop(t)
		// Whatever happened, the host is left as it was found.
		if exec.Command("dpkg", "--purge", "mailguard").Run() != nil {
			// A failed purge: remove what it would have, then try again.
			exec.Command("userdel", "mailguard").Run()
			exec.Command("groupdel", "mailguard").Run()
			exec.Command("rm", "-rf", "/etc/mailguard", "/var/lib/mailguard", "/run/mailguard", "/var/spool/postfix/mailguard").Run()
			exec.Command("dpkg", "--purge", "mailguard").Run()
		}
	})
	dpkg(t, "-i", debs["1.0.0"])
	b, err := exec.Command("/usr/sbin/mailguard", "version").Output()
	if err != nil || !strings.HasPrefix(string(b), "mailguard 1.0.0 (") || (len(rev) >= 12 && !strings.Contains(string(b), string(rev[:12]))) {
		t.Errorf("installed version: %q %v; want 1.0.0 and the commit %.12s", b, err, rev)
	}
	for _, path := range []string{"/etc/mailguard/signatures", "/lib/systemd/system/mailguard.service", "/etc/aide/aide.conf.d/70_aide_mailguard"} {
		if _, err := os.Stat(path); err != nil {
			t.Error(err)
		}
	}
	// The integrity rules read well in Debian's own AIDE configuration.
	if _, err := exec.LookPath("aide"); err == nil {
		if b, err := exec.Command("aide", "--config", "/etc/aide/aide.conf", "--config-check").CombinedOutput(); err != nil {
			t.Errorf("aide --config-check with the installed rules: %v\n%s", err, b)
		}
	}
	if fi, err := os.Stat("/var/lib/mailguard"); err != nil || fi.Sys().(*syscall.Stat_t).Uid == 0 {
		t.Errorf("/var/lib/mailguard not the mailguard user's: %v", err)
	}

	// The postmaster's edit: the milter's port. It must survive the upgrade.
	port := freePort(t)
	cfg := "/etc/mailguard/mailguard.toml"
	text, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(text), `listen = "inet:127.0.0.1:8897"`, fmt.Sprintf(`listen = "inet:127.0.0.1:%d"`, port), 1)
	if edited == string(text) {
		t.Fatalf("the installed configuration has no default listen line:\n%s", text)
	}
	write(t, cfg, edited)
	if b, err := exec.Command("runuser", "-u", "mailguard", "--", "/usr/sbin/mailguard", "check-config", "--config", cfg).CombinedOutput(); err != nil || !strings.Contains(string(b), "OK") {
		t.Fatalf("check-config as the mailguard user: %v\n%s", err, b)
	}

	// The MX runs the installed daemon as its milter; a second Postfix, the
	// sender, relays to it and retries what it tempfails.
	mx := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", port), "user@example.edu")
	sender := startPostfixConf(t, false, fmt.Sprintf("myhostname = sender.test.example\nvirtual_mailbox_domains =\nrelayhost = [127.0.0.1]:%d\n"+
		"minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\nqueue_run_delay = 1s\n", mx.port), "")
	daemon = startInstalled(t, port)
	send := func(n int, tag string) {
		for i := range n {
			f := filepath.Join(t.TempDir(), "msg")
			write(t, f, message(fmt.Sprintf("%s %d", tag, i), 20, -1, ""))
			if tr := sender.swaks(t, "sender@example.org", "user@example.edu", f); !strings.Contains(tr, "250 2.0.0 Ok: queued") {
				t.Fatalf("the sending Postfix refused %s %d:\n%s", tag, i, tr)
			}
		}
	}
	send(3, "before")
	worm := filepath.Join(t.TempDir(), "worm")
	write(t, worm, message("worm", 20, 10, ""))
	if tr := mx.swaks(t, "sender@example.org", "user@example.edu", worm); !strings.Contains(tr, "550 5.7.0") {
		t.Errorf("the installed daemon did not refuse a worm:\n%s", tr)
	}
	if got := mx.delivered(t, "user", 3); len(got) != 3 {
		t.Fatalf("%d of 3 messages delivered through the installed daemon", len(got))
	}

	// The upgrade, as dpkg and systemd's try-restart do it, with mail
	// arriving while the daemon is down.
	dpkg(t, "-i", debs["1.0.1"])
	daemon.stop(t)
	send(4, "during")
	waitForText(t, filepath.Join(sender.dir, "maillog"), "status=deferred", "451 4.7.1")
	daemon = startInstalled(t, port)
	send(3, "after")
	if got := mx.delivered(t, "user", 10); len(got) != 10 {
		// The sender retries every second or two; give it time.
		for i := 0; i < 300 && len(got) < 10; i++ {
			time.Sleep(100 * time.Millisecond)
			got = mx.delivered(t, "user", 10)
		}
		if len(got) != 10 {
			q, _ := exec.Command("postqueue", "-c", sender.dir, "-p").CombinedOutput()
			t.Fatalf("%d of 10 messages delivered after the upgrade; the sender's queue:\n%s", len(got), q)
		}
	}
	if b, _ := os.ReadFile(cfg); string(b) != edited {
		t.Errorf("the upgrade changed the postmaster's configuration")
	}
	if b, _ := exec.Command("/usr/sbin/mailguard", "version").Output(); !strings.HasPrefix(string(b), "mailguard 1.0.1 (") {
		t.Errorf("after the upgrade: %q", b)
	}
	if !strings.Contains(daemon.logs.String(), "mailguard started") {
		t.Errorf("the new daemon did not start:\n%s", daemon.logs)
	}

	// Purge: nothing left behind.
	daemon.stop(t)
	daemon = nil
	owned, _ := exec.Command("dpkg-query", "-L", "mailguard").Output()
	dpkg(t, "--purge", "mailguard")
	var left []string
	for _, path := range append(strings.Fields(string(owned)), "/etc/mailguard", "/var/lib/mailguard", "/run/mailguard", "/var/spool/postfix/mailguard") {
		if strings.HasPrefix(path, "/usr/share/doc/mailguard") || strings.Contains(path, "mailguard") {
			if _, err := os.Lstat(path); err == nil {
				left = append(left, path)
			}
		}
	}
	if len(left) > 0 {
		t.Errorf("left behind by the purge: %v", left)
	}
	for _, db := range []string{"passwd", "group"} {
		if exec.Command("getent", db, "mailguard").Run() == nil {
			t.Errorf("the mailguard %s entry is left behind", db)
		}
	}
	if exec.Command("dpkg-query", "-W", "mailguard").Run() == nil {
		if b, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "mailguard").Output(); !strings.Contains(string(b), "not-installed") {
			t.Errorf("dpkg still knows the package: %s", b)
		}
	}
}

// dpkg runs dpkg, waiting for the lock another apt or dpkg may hold.
func dpkg(t *testing.T, args ...string) {
	t.Helper()
	for i := 0; ; i++ {
		cmd := exec.Command("dpkg", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		b, err := cmd.CombinedOutput()
		if err == nil {
			return
		}
		if !strings.Contains(string(b), "lock") || i == 300 {
			t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		time.Sleep(time.Second)
	}
}

// installedDaemon is the packaged daemon, run as the unit runs it.
type installedDaemon struct {
	cmd  *exec.Cmd
	logs *lockedBuffer
}

func startInstalled(t *testing.T, port int) *installedDaemon {
	t.Helper()
	// RuntimeDirectory=mailguard, as systemd would make it.
	if b, err := exec.Command("install", "-d", "-o", "mailguard", "-g", "mailguard", "-m", "0755", "/run/mailguard").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	d := &installedDaemon{logs: &lockedBuffer{}}
	d.cmd = exec.Command("runuser", "-u", "mailguard", "--", "/usr/sbin/mailguard", "serve", "--config", "/etc/mailguard/mailguard.toml")
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitForPort(t, port, "the installed mailguard", d.logs.String)
	return d
}

// stop sends SIGTERM to the daemon (not to runuser, which waits for it).
func (d *installedDaemon) stop(t *testing.T) {
	if d == nil || d.cmd == nil {
		return
	}
	if b, err := os.ReadFile("/run/mailguard/mailguard.pid"); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		d.cmd.Process.Kill()
		t.Errorf("the installed daemon did not stop:\n%s", d.logs)
	}
	d.cmd = nil
}

// waitForText waits until a file holds a line with every word.
func waitForText(t *testing.T, path string, words ...string) {
	t.Helper()
	for i := 0; i < 300; i++ {
		b, _ := os.ReadFile(path)
		for _, line := range strings.Split(string(b), "\n") {
			ok := true
			for _, w := range words {
				ok = ok && strings.Contains(line, w)
			}
			if ok {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	t.Fatalf("no line with %q in %s:\n%s", words, path, b)
}
