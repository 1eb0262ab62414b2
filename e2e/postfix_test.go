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

// postfix is a private Postfix instance on a loopback port, delivering
// the domain example.edu into Maildirs under mail/.
type postfix struct {
	dir  string
	port int
	mail string
}

// The Postfix instance runs as root but delivers as this user: virtual(8)
// refuses uids below virtual_minimum_uid.
const mailUID, mailGID = 65534, 65534

func startPostfix(t *testing.T, milter string, mailboxes ...string) *postfix {
	t.Helper()
	return startPostfixWith(t, false, milter, mailboxes...)
}

// startPostfixWith starts the private Postfix, with smtpd chrooted into
// its queue directory when chroot is set (as Debian ships it).
func startPostfixWith(t *testing.T, chroot bool, milter string, mailboxes ...string) *postfix {
	t.Helper()
	return startPostfixConf(t, chroot, "", milter, mailboxes...)
}

// startPostfixConf starts the private Postfix with extra main.cf lines.
func startPostfixConf(t *testing.T, chroot bool, extra, milter string, mailboxes ...string) *postfix {
	t.Helper()
	p := preparePostfix(t, freePort(t), chroot, extra, milter, mailboxes...)
	if err := p.launch(); err != nil {
		t.Fatal(err)
	}
	p.waitReady(t)
	return p
}

// preparePostfix writes the configuration of a private Postfix on port,
// to be started with launch (several may start at once) and waitReady;
// it is stopped and removed when the test ends. Instances started side by
// side need ports taken together (freePorts): Postfix's smtpd listener
// shares a port with another Postfix on it instead of failing to start.
func preparePostfix(t *testing.T, port int, chroot bool, extra, milter string, mailboxes ...string) *postfix {
	t.Helper()
	requireCommands(t, map[string]string{"postfix": "postfix", "swaks": "swaks"})
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("a private Postfix instance needs root, as CI runs")
		}
		t.Skip("a private Postfix instance needs root")
	}
	dir, err := os.MkdirTemp("/tmp", "mailguard-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	p := &postfix{dir: dir, port: port, mail: filepath.Join(dir, "mail")}
	for _, sub := range []string{"queue", "data", "mail"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chown(p.mail, mailUID, mailGID)

	var vmailbox strings.Builder
	for _, m := range mailboxes {
		user, _, _ := strings.Cut(m, "@")
		fmt.Fprintf(&vmailbox, "%s %s/\n", m, user)
	}
	write(t, filepath.Join(dir, "vmailbox"), vmailbox.String())
	hostname := "myhostname = mx.test.example\n"
	if strings.Contains(extra, "myhostname") {
		hostname = "" // extra names the host
	}
	write(t, filepath.Join(dir, "main.cf"), fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
meta_directory = /etc/postfix
mail_owner = postfix
%[5]smydomain = test.example
myorigin = test.example
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = example.edu
virtual_mailbox_maps = texthash:%[1]s/vmailbox
virtual_mailbox_base = %[1]s/mail
virtual_uid_maps = static:%[3]d
virtual_gid_maps = static:%[4]d
smtpd_milters = %[2]s
milter_protocol = 6
milter_default_action = tempfail
smtp_dns_support_level = disabled
maillog_file = %[1]s/maillog
maillog_file_prefixes = /var, /tmp
smtpd_banner = $myhostname ESMTP
`, dir, milter, mailUID, mailGID, hostname)+extra)
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "master.cf"), privateMaster(string(master), p.port, chroot))
	if chroot {
		// What a chrooted smtpd looks up inside the jail (Debian's
		// init script copies the same).
		os.MkdirAll(filepath.Join(dir, "queue", "etc"), 0o755)
		for _, f := range []string{"localtime", "hosts", "resolv.conf", "services", "nsswitch.conf", "host.conf"} {
			if b, err := os.ReadFile(filepath.Join("/etc", f)); err == nil {
				os.WriteFile(filepath.Join(dir, "queue", "etc", f), b, 0o644)
			}
		}
	}

	allowConfigDir(t, dir)
	t.Cleanup(func() {
		exec.Command("postfix", "-c", dir, "stop").Run()
		waitForMasterExit(dir)
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "maillog"))
			t.Logf("postfix log:\n%s", log)
		}
		forgetConfigDir(dir)
		os.RemoveAll(dir)
	})
	return p
}

// launch starts a prepared Postfix; it may run on any goroutine.
func (p *postfix) launch() error {
	for _, args := range [][]string{{"set-permissions"}, {"start"}} {
		cmd := exec.Command("postfix", append([]string{"-c", p.dir}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			log, _ := os.ReadFile(filepath.Join(p.dir, "maillog"))
			return fmt.Errorf("postfix %s: %v\n%s\n%s", args[0], err, out, log)
		}
	}
	return nil
}

// waitReady waits for a launched Postfix to listen.
func (p *postfix) waitReady(t *testing.T) {
	t.Helper()
	waitForPort(t, p.port, "postfix", func() string {
		log, _ := os.ReadFile(filepath.Join(p.dir, "maillog"))
		return string(log)
	})
}

// privateMaster turns Debian's master.cf into one for a private instance:
// no chroot (but for smtpd, if chrootSmtpd), and smtpd on our loopback
// port only.
func privateMaster(master string, port int, chrootSmtpd bool) string {
	var out strings.Builder
	for _, line := range strings.Split(master, "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, " ") {
			f[4] = "n" // no chroot
			if f[0] == "smtp" && f[1] == "inet" {
				f[0] = fmt.Sprintf("127.0.0.1:%d", port)
				if chrootSmtpd {
					f[4] = "y"
				}
			}
			line = strings.Join(f, " ")
		}
		out.WriteString(line + "\n")
	}
	return out.String()
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Postfix accepts a non-default config directory only when the default
// main.cf lists it in alternate_config_directories. A file lock keeps
// concurrent test processes from losing each other's entries.
func allowConfigDir(t *testing.T, dir string) {
	t.Helper()
	editAlternates(func(dirs []string) []string { return append(dirs, dir) })
}

func forgetConfigDir(dir string) {
	editAlternates(func(dirs []string) []string {
		var keep []string
		for _, d := range dirs {
			if d != dir {
				keep = append(keep, d)
			}
		}
		return keep
	})
}

func editAlternates(edit func([]string) []string) {
	lock, err := os.OpenFile("/etc/postfix/.mailguard-e2e.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err == nil {
		defer lock.Close()
		syscall.Flock(int(lock.Fd()), syscall.LOCK_EX)
	}
	out, _ := exec.Command("postconf", "-h", "alternate_config_directories").Output()
	dirs := strings.FieldsFunc(string(out), func(r rune) bool { return r == ',' || r == ' ' || r == '\n' })
	exec.Command("postconf", "-e", "alternate_config_directories = "+strings.Join(edit(dirs), ", ")).Run()
}

func waitForMasterExit(dir string) {
	pidFile := filepath.Join(dir, "queue", "pid", "master.pid")
	for i := 0; i < 100; i++ {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return
		}
		var pid int
		fmt.Sscan(strings.TrimSpace(string(b)), &pid)
		if pid == 0 || syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// swaks sends one message (the DATA text in file) and returns swaks's
// transcript.
func (p *postfix) swaks(t *testing.T, from, to, dataFile string) string {
	t.Helper()
	cmd := exec.Command("swaks", "--server", "127.0.0.1", "--port", fmt.Sprint(p.port),
		"--from", from, "--to", to, "--data", dataFile, "--timeout", "60")
	out, _ := cmd.CombinedOutput() // a refusal is an exit status too
	return string(out)
}

// delivered returns the messages in a user's Maildir new/, waiting up to a
// few seconds for want of them.
func (p *postfix) delivered(t *testing.T, user string, want int) []string {
	t.Helper()
	var msgs []string
	for i := 0; i < 100; i++ {
		msgs = msgs[:0]
		entries, _ := os.ReadDir(filepath.Join(p.mail, user, "new"))
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(p.mail, user, "new", e.Name()))
			if err == nil {
				msgs = append(msgs, string(b))
			}
		}
		if len(msgs) >= want {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return msgs
}

// TestChrootedPostfixUnixSocket: Postfix as Debian ships it (smtpd in a
// chroot) reaches mailguard on a unix socket in its queue directory, set
// up only by mailguard's configuration: the folder is created, the socket
// given to Postfix's group, and an infected message refused.
func TestChrootedPostfixUnixSocket(t *testing.T) {
	// The socket lives in Postfix's queue directory: start Postfix first
	// (it tempfails until mailguard is up).
	p := startPostfixWith(t, true, "unix:/mailguard/milter.sock", "user@example.edu")
	sock := filepath.Join(p.dir, "queue", "mailguard", "milter.sock")
	startMailguardSocket(t, sock, "[virus]\nsignatures = \"signatures\"\n", map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n"})
	fi, err := os.Stat(filepath.Dir(sock))
	if err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("socket folder: %v %v", fi, err)
	}
	for _, c := range []virusCase{{"clean", message("clean", 100, -1, ""), false}, {"infected", message("mid", 300, 100, ""), true}} {
		file := filepath.Join(t.TempDir(), "msg")
		os.WriteFile(file, []byte(c.data), 0o644)
		checkVirusReply(t, c, p.swaks(t, "sender@example.org", "user@example.edu", file))
	}
}
