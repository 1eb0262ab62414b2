package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailguard/internal/testserver"
)

// pop3Dovecot is a private Dovecot serving POP3 on a loopback port, its
// users in a passwd-file, asking a policy server when policy is set.
type pop3Dovecot struct {
	dir, conf string
	port      int
	cmd       *exec.Cmd
}

func startPOP3Dovecot(t *testing.T, policyURL string, users map[string]string) *pop3Dovecot {
	t.Helper()
	requireCommands(t, map[string]string{"dovecot": "dovecot-core", "/usr/lib/dovecot/pop3-login": "dovecot-pop3d"})
	dir, err := os.MkdirTemp("/tmp", "dovecot-pop3-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.MkdirAll(filepath.Join(dir, "home"), 0o755)
	var passwd strings.Builder
	for user, pw := range users {
		home := filepath.Join(dir, "home", user)
		os.MkdirAll(home, 0o700)
		os.Chown(home, mailUID, mailGID)
		fmt.Fprintf(&passwd, "%s:{PLAIN}%s:%d:%d::%s\n", user, pw, mailUID, mailGID, home)
	}
	write(t, filepath.Join(dir, "passwd"), passwd.String())
	d := &pop3Dovecot{dir: dir, conf: filepath.Join(dir, "dovecot.conf"), port: freePort(t)}
	policy := ""
	if policyURL != "" {
		policy = fmt.Sprintf(`auth_policy_server_url = %s
auth_policy_server_api_header = X-API-Key: test-key
auth_policy_hash_nonce = a-nonce-for-the-test
auth_policy_server_timeout_msecs = 2000
`, policyURL)
	}
	write(t, d.conf, fmt.Sprintf(`base_dir = %[1]s/run
state_dir = %[1]s/state
instance_name = mailguard-test-%[2]d
log_path = %[1]s/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
first_valid_uid = 0
mail_location = maildir:~/Maildir
passdb {
  driver = passwd-file
  args = scheme=PLAIN %[1]s/passwd
}
userdb {
  driver = passwd-file
  args = %[1]s/passwd
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = %[2]d
  }
  inet_listener pop3s {
    port = 0
  }
}
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
%[3]s`, dir, d.port, policy))
	d.cmd = exec.Command("dovecot", "-F", "-c", d.conf)
	out := &lockedBuffer{}
	d.cmd.Stdout, d.cmd.Stderr = out, out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("dovecot log:\n%s%s", out, d.log())
		}
	})
	waitForPort(t, d.port, "dovecot", func() string { return out.String() + d.log() })
	return d
}

func (d *pop3Dovecot) log() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "dovecot.log"))
	return string(b)
}

// login logs in over POP3 from a loopback source address and reports
// whether it worked and how long it took from PASS to the answer.
func (d *pop3Dovecot) login(t *testing.T, source, user, password string) (bool, time.Duration) {
	t.Helper()
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: 5 * time.Second}
	c, err := dialer.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", d.port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(c)
	line := func() string {
		s, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("POP3 from %s: %v (got %q)\n%s", source, err, s, d.log())
		}
		return s
	}
	if g := line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting %q", g)
	}
	fmt.Fprintf(c, "USER %s\r\n", user)
	line()
	start := time.Now()
	fmt.Fprintf(c, "PASS %s\r\n", password)
	reply := line()
	took := time.Since(start)
	fmt.Fprintf(c, "QUIT\r\n")
	return strings.HasPrefix(reply, "+OK"), took
}

const policyRules = `
[[dovecot_policy.rule]]
name = "guessing"
event = "failure"
key = "client"
limit = 5
window = "10m"
action = "delay:3s,reject"
reject_limit = 7
`

func policyConfig(port int, backend string) string {
	return fmt.Sprintf("listen = \"LISTEN\"\n[dovecot_policy]\nlisten = \"inet:127.0.0.1:%d\"\napi_key = \"X-API-Key: test-key\"\nbackend = %q\n", port, backend) + policyRules
}

// TestDovecotPolicyDoor: a real Dovecot asks mailguard about every POP3
// login; a client guessing passwords is delayed, then refused, while
// another user from another address logs in at once.
func TestDovecotPolicyDoor(t *testing.T) {
	policyPort := freePort(t)
	cfg := policyConfig(policyPort, "memory")
	mg := startMailguard(t, cfg, nil)
	waitForPort(t, policyPort, "mailguard's policy door", mg.logs.String)
	d := startPOP3Dovecot(t, fmt.Sprintf("http://127.0.0.1:%d/", policyPort), map[string]string{"alice": "right-one", "bob": "bobs-pw"})

	for i := 1; i <= 5; i++ {
		if ok, _ := d.login(t, "127.0.0.7", "alice", fmt.Sprintf("guess%d", i)); ok {
			t.Fatalf("guess %d logged in", i)
		}
	}
	// The 6th attempt, with the right password: held 3 s, then in.
	ok, took := d.login(t, "127.0.0.7", "alice", "right-one")
	if !ok || took < 3*time.Second {
		t.Fatalf("6th attempt: logged in %v after %s; want in, after at least the rule's 3 s", ok, took)
	}
	t.Logf("6th attempt, right password: in after %s (rule: delay 3s)", took)
	if got := mg.lines("msg=decision", "filter=dovecot_policy", `verdict="delay 3s"`, "rule=guessing", "client=127.0.0.7", "login=alice"); len(got) == 0 {
		t.Fatalf("no delay decision logged:\n%s", mg.logs)
	}
	// Another user from another address: at once, no decision.
	ok, took = d.login(t, "127.0.0.8", "bob", "bobs-pw")
	if !ok {
		t.Fatal("bob could not log in")
	}
	t.Logf("bob from another address: in after %s", took)
	if got := mg.lines("msg=decision", "client=127.0.0.8"); len(got) != 0 {
		t.Fatalf("bob's login was judged: %v", got)
	}
	// The guesser goes on: past reject_limit (7 failures; the login
	// that worked was no failure), refused even with the right password.
	d.login(t, "127.0.0.7", "alice", "guess6")
	d.login(t, "127.0.0.7", "alice", "guess7")
	if ok, _ := d.login(t, "127.0.0.7", "alice", "right-one"); ok {
		t.Fatal("past reject_limit the right password still logged in")
	}
	if got := mg.lines("msg=decision", "verdict=reject", "rule=guessing", "client=127.0.0.7"); len(got) == 0 {
		t.Fatalf("no refusal logged:\n%s", mg.logs)
	}

	// mailguard stopped: Dovecot's own fallback lets logins go on.
	mg.cmd.Process.Signal(syscall.SIGTERM)
	mg.cmd.Wait()
	if ok, _ := d.login(t, "127.0.0.7", "alice", "right-one"); !ok {
		t.Fatalf("with mailguard stopped the login failed:\n%s", d.log())
	}
	if !strings.Contains(d.log(), "policy") {
		t.Logf("dovecot did not log the policy server's absence")
	}
	// Back: rules apply again (counts in memory started over).
	mg = startMailguard(t, cfg, nil)
	waitForPort(t, policyPort, "mailguard's policy door", mg.logs.String)
	for i := 1; i <= 5; i++ {
		d.login(t, "127.0.0.9", "alice", fmt.Sprintf("again%d", i))
	}
	if ok, took := d.login(t, "127.0.0.9", "alice", "right-one"); !ok || took < 3*time.Second {
		t.Fatalf("after the restart: in %v after %s", ok, took)
	}
	if got := mg.lines("msg=decision", `verdict="delay 3s"`, "client=127.0.0.9"); len(got) == 0 {
		t.Fatalf("after the restart no delay:\n%s", mg.logs)
	}
	waitForLogLines(t, mg, "summary")
}

// waitForLogLines stops the daemon and waits for its final summary, which
// must count the door's decisions.
func waitForLogLines(t *testing.T, mg *daemon, what string) {
	t.Helper()
	mg.cmd.Process.Signal(syscall.SIGTERM)
	mg.cmd.Wait()
	if got := mg.lines("msg="+what, `"hits.dovecot_policy.guessing delayed"=1`); len(got) == 0 {
		t.Fatalf("the final summary does not count the delay:\n%s", mg.logs)
	}
}

// TestDovecotPolicySharedRedis: two Dovecots, each asking its own
// mailguard, both counting in one Redis: failures seen by one host delay
// the client on the other.
func TestDovecotPolicySharedRedis(t *testing.T) {
	redis := testserver.StartRedis(t)
	var doors []*pop3Dovecot
	var daemons []*daemon
	for i := 0; i < 2; i++ {
		port := freePort(t)
		mg := startMailguard(t, policyConfig(port, redis.URL()), nil)
		waitForPort(t, port, "mailguard's policy door", mg.logs.String)
		daemons = append(daemons, mg)
		doors = append(doors, startPOP3Dovecot(t, fmt.Sprintf("http://127.0.0.1:%d/", port), map[string]string{"alice": "right-one"}))
	}
	for i := 1; i <= 5; i++ {
		doors[0].login(t, "127.0.0.7", "alice", fmt.Sprintf("guess%d", i))
	}
	ok, took := doors[1].login(t, "127.0.0.7", "alice", "right-one")
	if !ok || took < 3*time.Second {
		t.Fatalf("on the second host: in %v after %s", ok, took)
	}
	t.Logf("on the second host, after 5 failures on the first: in after %s", took)
	if got := daemons[1].lines("msg=decision", `verdict="delay 3s"`, "count=5", "client=127.0.0.7"); len(got) == 0 {
		t.Fatalf("the second mailguard did not see the first one's counts:\n%s", daemons[1].logs)
	}
	if got := daemons[0].lines("msg=decision"); len(got) != 0 {
		t.Fatalf("the first mailguard decided: %v", got)
	}
	// Redis gone: logins are allowed, and the failure is logged.
	redis.Stop()
	ok, took = doors[0].login(t, "127.0.0.7", "alice", "right-one")
	if !ok {
		t.Fatal("with Redis stopped the login failed")
	}
	t.Logf("with Redis stopped: in after %s", took)
	waitForLog(t, daemons[0], "counting failed; answering by on_error", "command=allow")
}

// policyAsk posts one command to the door as Dovecot does and returns
// the status it answers.
func policyAsk(t *testing.T, port int, command, body string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d/?command=%s", port, command), strings.NewReader(body))
	req.Header.Set("X-API-Key", "test-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a struct{ Status int }
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&a) != nil {
		t.Fatalf("%s: HTTP %d", command, resp.StatusCode)
	}
	return a.Status
}

// TestDovecotPolicyReload: SIGHUP changes the door's rules, the counts
// in memory survive it, and a broken file keeps the running rules.
func TestDovecotPolicyReload(t *testing.T) {
	port := freePort(t)
	cfg := policyConfig(port, "memory")
	mg := startMailguard(t, cfg, nil)
	waitForPort(t, port, "mailguard's policy door", mg.logs.String)
	const attempt = `{"login":"alice","pwhash":"1a2","remote":"192.0.2.7","protocol":"imap","success":false}`
	for i := 0; i < 3; i++ {
		policyAsk(t, port, "allow", attempt)
		policyAsk(t, port, "report", attempt)
	}
	if s := policyAsk(t, port, "allow", attempt); s != 0 {
		t.Fatalf("3 failures of 5: %d", s)
	}
	file := filepath.Join(mg.dir, "mailguard.toml")
	strict := strings.Replace(strings.Replace(cfg, "limit = 5", "limit = 2", 1), "reject_limit = 7", "reject_limit = 3", 1)
	write(t, file, strings.ReplaceAll(strict, "LISTEN", fmt.Sprintf("inet:127.0.0.1:%d", mg.port)))
	mg.cmd.Process.Signal(syscall.SIGHUP)
	waitForLog(t, mg, "dovecot policy door reloaded")
	if s := policyAsk(t, port, "allow", attempt); s != -1 {
		t.Fatalf("after the reload, 3 failures of reject_limit 3: %d", s)
	}
	write(t, file, strict+"\n[[dovecot_policy.rule]]\nevent = \"nonsense\"\n")
	mg.cmd.Process.Signal(syscall.SIGHUP)
	waitForLog(t, mg, "reload failed")
	if s := policyAsk(t, port, "allow", attempt); s != -1 {
		t.Fatalf("after a failed reload: %d", s)
	}
}
