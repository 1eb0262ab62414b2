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

	"mailguard/internal/testserver"
)

// milterSession runs one SMTP session's milter side from client addr,
// with one message of that body: the reply at the first stage that
// refuses, "" when the message is accepted.
func milterSession(t *testing.T, port int, addr, body string) string {
	t.Helper()
	reply, err := milterSessionErr(port, addr, body)
	if err != nil {
		t.Fatal(err)
	}
	return reply
}

// milterSessionErr is milterSession for goroutines other than the
// test's, which must not call t.Fatal. The client waits 30 s for a reply
// (the MTA's timeout), past any tarpit.
func milterSessionErr(port int, addr, body string) (string, error) {
	c := milter.NewClient("tcp", fmt.Sprintf("127.0.0.1:%d", port), milter.WithReadTimeout(30*time.Second))
	s, err := c.Session(milter.NewMacroBag())
	if err != nil {
		return "", err
	}
	defer s.Close()
	steps := []func() (*milter.Action, error){
		func() (*milter.Action, error) { return s.Conn("mx.example.org", milter.FamilyInet, 25, addr) },
		func() (*milter.Action, error) { return s.Helo("mx.example.org") },
		func() (*milter.Action, error) { return s.Mail("a@example.org", "") },
		func() (*milter.Action, error) { return s.Rcpt("u@example.edu", "") },
		func() (*milter.Action, error) { return s.DataStart() },
		func() (*milter.Action, error) { return s.HeaderEnd() },
		func() (*milter.Action, error) { return s.BodyChunk([]byte(body)) },
	}
	for _, step := range steps {
		act, err := step()
		if err != nil {
			return "", err
		}
		if act.StopProcessing() {
			return act.SMTPReply, nil
		}
	}
	_, act, err := s.End()
	if err != nil {
		return "", err
	}
	if act.StopProcessing() {
		return act.SMTPReply, nil
	}
	return "", nil
}

// Two mailguard hosts share one Redis: a limit of N connections per
// client counts connections to either, and the N+1th is refused wherever
// it lands. With Redis gone mail flows (on_error = "accept"); when Redis
// is back, counting resumes.
func TestRedisSharedLimit(t *testing.T) {
	redis := testserver.StartRedis(t)
	config := `listen = "LISTEN"
filters = ["ratelimit"]
[ratelimit]
backend = "` + redis.URL() + `"
[[ratelimit.rule]]
name = "conn"
event = "connection"
key = "client"
limit = 5
window = "1m"
`
	a := startMailguard(t, config, nil)
	b := startMailguard(t, config, nil)
	hosts := []*daemon{a, b}
	spread := func(client string, n int) []string {
		var replies []string
		for i := 0; i < n; i++ {
			replies = append(replies, milterSession(t, hosts[i%2].port, client, "hello\r\n"))
		}
		return replies
	}
	got := spread("192.0.2.7", 6)
	for i, r := range got[:5] {
		if r != "" {
			t.Fatalf("connection %d refused: %q", i+1, r)
		}
	}
	if !strings.HasPrefix(got[5], "451 4.7.1") {
		t.Fatalf("6th connection across both hosts: %q", got[5])
	}
	if r := milterSession(t, a.port, "192.0.2.8", "hello\r\n"); r != "" {
		t.Fatalf("another client: %q", r)
	}

	redis.Stop()
	for i, r := range spread("192.0.2.9", 8) {
		if r != "" {
			t.Fatalf("with Redis down, connection %d refused: %q", i+1, r)
		}
	}
	if len(a.lines("filter failed", "filter=ratelimit")) == 0 {
		t.Fatalf("Redis's failure not logged:\n%s", a.logs)
	}

	redis.Start()
	// Each try is a client of its own: a try made while the hosts were
	// still reconnecting counted some of its connections, and a retry
	// from the same client would start from those.
	var last []string
	deadline := time.Now().Add(10 * time.Second)
	for try := 0; try < 40 && time.Now().Before(deadline); try++ {
		if last = spread(fmt.Sprintf("192.0.2.%d", 10+try), 6); strings.HasPrefix(last[5], "451 4.7.1") && last[4] == "" {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("counting did not resume with Redis back: %q", last)
}

// A tarpitted session holds only itself: while one client waits out its
// 10 s, a hundred messages from others go through.
func TestTarpitHoldsOnlyItsSession(t *testing.T) {
	d := startMailguard(t, `listen = "LISTEN"
filters = ["ratelimit"]
[ratelimit]
[[ratelimit.rule]]
name = "slow-down"
event = "connection"
key = "client"
limit = 1
window = "1h"
action = "tarpit:10s"
`, nil)
	others := func(base int) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 4)
		for i := 0; i < 100; i++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if r, err := milterSessionErr(d.port, fmt.Sprintf("10.%d.%d.%d", base, i/250, i%250+1), "hello\r\n"); r != "" || err != nil {
					t.Errorf("message %d: %q %v", i, r, err)
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	untarpitted := others(1)
	if r := milterSession(t, d.port, "192.0.2.66", "hello\r\n"); r != "" {
		t.Fatalf("first connection: %q", r)
	}
	held := make(chan time.Time, 1)
	go func() {
		if r, err := milterSessionErr(d.port, "192.0.2.66", "hello\r\n"); r != "" || err != nil {
			t.Errorf("the tarpitted session, after its delay: %q %v", r, err)
		}
		held <- time.Now()
	}()
	time.Sleep(200 * time.Millisecond) // the second session reaches its tarpit
	during := others(2)
	select {
	case at := <-held:
		t.Fatalf("the tarpitted session ended (at %s) before the others did", at.Format(time.StampMilli))
	default:
	}
	t.Logf("100 messages from other clients: %s without a tarpitted session, %s beside one (ratio %.2f)", untarpitted, during, float64(during)/float64(untarpitted))
	<-held
}

// dovecotAuth runs Dovecot's authentication service alone, for Postfix's
// SASL, with one user in a passwd-file.
func dovecotAuth(t *testing.T, user, password string) string {
	t.Helper()
	requireCommands(t, map[string]string{"dovecot": "dovecot-core"})
	dir, err := os.MkdirTemp("/tmp", "dovecot-auth-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	write(t, filepath.Join(dir, "passwd"), fmt.Sprintf("%s:{PLAIN}%s\n", user, password))
	sock := filepath.Join(dir, "auth")
	write(t, filepath.Join(dir, "dovecot.conf"), fmt.Sprintf(`base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
protocols =
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%%u %[1]s/passwd
}
userdb {
  driver = static
  args = uid=65534 gid=65534 home=%[1]s/home
}
service auth {
  unix_listener %[2]s {
    mode = 0666
  }
}
`, dir, sock))
	cmd := exec.Command("dovecot", "-F", "-c", filepath.Join(dir, "dovecot.conf"))
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "dovecot.log"))
	t.Fatalf("dovecot auth did not start:\n%s\n%s", out, log)
	return ""
}

// swaksFrom sends a message from a given loopback address, optionally
// logged in.
func (p *postfix) swaksFrom(t *testing.T, source, user, password string) string {
	t.Helper()
	args := []string{"--server", "127.0.0.1", "--port", fmt.Sprint(p.port), "--local-interface", source,
		"--from", "sender@example.org", "--to", "user@example.edu", "--timeout", "30"}
	if user != "" {
		args = append(args, "--auth", "PLAIN", "--auth-user", user, "--auth-password", password)
	}
	out, _ := exec.Command("swaks", args...).CombinedOutput()
	return string(out)
}

func TestPostfixAccessAndRatelimit(t *testing.T) {
	sock := dovecotAuth(t, "alice", "s3cret")
	dns := testserver.StartDNS(t, "bl.test", map[string]string{"4.0.0.127": "127.0.0.2"})
	d := startMailguard(t, `listen = "LISTEN"
filters = ["access", "ratelimit"]
[access]
deny = ["127.0.0.2"]
dnsbl = ["bl.test"]
dns_server = "`+dns.Server()+`"
dnsbl_timeout = "1s"
[ratelimit]
[[ratelimit.rule]]
name = "conn-per-client"
event = "connection"
key = "client"
limit = 3
window = "1m"
`, nil)
	p := startPostfixConf(t, false, fmt.Sprintf("smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = dovecot\nsmtpd_sasl_path = %s\n", sock),
		fmt.Sprintf("inet:127.0.0.1:%d", milterPort(t, d.port, "postfix")), "user@example.edu")

	if out := p.swaksFrom(t, "127.0.0.2", "", ""); !strings.Contains(out, "<** 550 5.7.1 Access denied") {
		t.Fatalf("denied client not refused with 550 5.7.1:\n%s", tail(out))
	}
	if out := p.swaksFrom(t, "127.0.0.2", "alice", "s3cret"); !strings.Contains(out, "235 2.7.0") || !strings.Contains(out, "<-  250 2.0.0") {
		t.Fatalf("authenticated submission from the denied client not accepted:\n%s", tail(out))
	}
	for i := 1; i <= 3; i++ {
		if out := p.swaksFrom(t, "127.0.0.3", "", ""); !strings.Contains(out, "<-  250 2.0.0") {
			t.Fatalf("connection %d under the limit refused:\n%s", i, tail(out))
		}
	}
	if out := p.swaksFrom(t, "127.0.0.3", "", ""); !strings.Contains(out, "451 4.7.1") {
		t.Fatalf("4th connection within the window not refused with 451 4.7.1:\n%s", tail(out))
	}
	if l := d.lines("decision", "filter=ratelimit", "conn-per-client"); len(l) != 1 {
		t.Fatalf("decision lines:\n%s", d.logs)
	}

	// A client the DNS blocklist lists; then the DNS server hangs, and
	// mail flows within dnsbl_timeout.
	if out := p.swaksFrom(t, "127.0.0.4", "", ""); !strings.Contains(out, "<** 550 5.7.1 Service unavailable; client [127.0.0.4] blocked using bl.test") {
		t.Fatalf("listed client not refused:\n%s", tail(out))
	}
	dns.Pause()
	defer dns.Resume()
	if out := p.swaksFrom(t, "127.0.0.5", "", ""); !strings.Contains(out, "<-  250 2.0.0") {
		t.Fatalf("with the DNS server hung, mail did not flow:\n%s", tail(out))
	}
	if l := d.lines("filter failed", "filter=access", "bl.test"); len(l) != 1 {
		t.Fatalf("the DNS failure not logged once:\n%s", d.logs)
	}
}
