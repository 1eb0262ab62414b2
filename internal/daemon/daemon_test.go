package daemon

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/config"
	"mailguard/internal/listen"
	"mailguard/internal/pidfile"
	"mailguard/internal/testserver"
)

// These tests run the daemon in this process and speak the milter
// protocol to it as Postfix does; a reload is a real SIGHUP to this
// process, which the daemon's handler takes. They do not run in parallel:
// every running daemon would take the signal.

// syncBuffer is the daemon's stderr.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testDaemon struct {
	t    *testing.T
	dir  string
	conf string
	addr string
	http string // the HTTP listener's address, "" when off
	logs *syncBuffer
}

// start runs the daemon on config (LISTEN stands for a free port) until
// the test ends.
func start(t *testing.T, config string) *testDaemon {
	t.Helper()
	d := &testDaemon{t: t, dir: t.TempDir(), logs: &syncBuffer{}}
	d.conf = filepath.Join(d.dir, "mailguard.toml")
	d.write(config)
	ready := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{ConfigFile: d.conf, AllowRoot: true, Stderr: d.logs, Ready: func(a string) { ready <- a },
			HTTPReady: func(a string) { d.http = a }, Version: "test"})
	}()
	select {
	case d.addr = <-ready:
	case err := <-done:
		t.Fatalf("daemon did not start: %v\n%s", err, d.logs)
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon did not start\n%s", d.logs)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	return d
}

func (d *testDaemon) write(config string) {
	d.t.Helper()
	if d.addr == "" {
		port := testserver.FreePort(d.t)
		config = strings.ReplaceAll(config, "LISTEN", fmt.Sprintf("inet:127.0.0.1:%d", port))
	} else {
		config = strings.ReplaceAll(config, "LISTEN", "inet:"+d.addr)
	}
	if err := os.WriteFile(d.conf, []byte(config), 0o644); err != nil {
		d.t.Fatal(err)
	}
}

// reload sends SIGHUP and waits for the daemon to say it reloaded.
func (d *testDaemon) reload() {
	d.t.Helper()
	before := strings.Count(d.logs.String(), "msg=reloaded")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		d.t.Fatal(err)
	}
	d.waitLog(func(s string) bool { return strings.Count(s, "msg=reloaded") > before }, "reloaded")
}

func (d *testDaemon) waitLog(ok func(string) bool, what string) {
	d.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(d.logs.String()); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			d.t.Fatalf("log never said %s:\n%s", what, d.logs)
		}
	}
}

// smtp is one SMTP session's milter connection, as Postfix opens it.
type smtp struct {
	t *testing.T
	s *milter.ClientSession
}

// connect opens an SMTP session from client addr; macros are the
// connect macros ({daemon_name}...). It fails the test if the connection
// is refused.
func (d *testDaemon) connect(addr string, macros map[milter.MacroName]string) *smtp {
	d.t.Helper()
	bag := milter.NewMacroBag()
	for k, v := range macros {
		bag.Set(k, v)
	}
	c := milter.NewClient("tcp", d.addr, milter.WithReadTimeout(30*time.Second))
	s, err := c.Session(bag)
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { s.Close() })
	m := &smtp{t: d.t, s: s}
	if r := m.step(func() (*milter.Action, error) { return s.Conn("client.example.org", milter.FamilyInet, 25000, addr) }); r != "" {
		d.t.Fatalf("connection from %s refused: %s", addr, r)
	}
	if r := m.step(func() (*milter.Action, error) { return s.Helo("client.example.org") }); r != "" {
		d.t.Fatalf("HELO from %s refused: %s", addr, r)
	}
	return m
}

func (m *smtp) step(f func() (*milter.Action, error)) string {
	m.t.Helper()
	act, err := f()
	if err != nil {
		m.t.Fatal(err)
	}
	if act.StopProcessing() {
		return act.SMTPReply
	}
	return ""
}

// message sends one message and returns the reply of the stage that
// refused it, "" when it is accepted.
func (m *smtp) message() string {
	m.t.Helper()
	s := m.s
	steps := []func() (*milter.Action, error){
		func() (*milter.Action, error) { return s.Mail("sender@example.org", "") },
		func() (*milter.Action, error) { return s.Rcpt("user@example.edu", "") },
		func() (*milter.Action, error) { return s.DataStart() },
		func() (*milter.Action, error) { return s.HeaderField("Subject", "hello", nil) },
		func() (*milter.Action, error) { return s.HeaderEnd() },
		func() (*milter.Action, error) { return s.BodyChunk([]byte("hello\r\n")) },
	}
	for _, st := range steps {
		if r := m.step(st); r != "" {
			s.Abort(nil)
			return r
		}
	}
	_, act, err := s.End()
	if err != nil {
		m.t.Fatal(err)
	}
	if act.StopProcessing() {
		return act.SMTPReply
	}
	return ""
}

// A rule "1 message per client per minute": message 1 accepted; SIGHUP;
// message 2 on the same SMTP session and message 3 on a new one from the
// same client are refused. (A reload used to reset every count, and move
// the open session to the new pipeline without its client address.)
func TestReloadKeepsRateLimits(t *testing.T) {
	config := `listen = "LISTEN"
filters = ["ratelimit"]
[ratelimit]
backend = "memory"
[[ratelimit.rule]]
name = "msg"
event = "message"
key = "client"
limit = 1
window = "1m"
`
	d := start(t, config)
	a := d.connect("192.0.2.7", nil)
	if r := a.message(); r != "" {
		t.Fatalf("message 1: %q", r)
	}
	d.reload()
	if r := a.message(); !strings.HasPrefix(r, "451 4.7.1") {
		t.Errorf("message 2, same session, after the reload: %q, want 451 4.7.1", r)
	}
	b := d.connect("192.0.2.7", nil)
	if r := b.message(); !strings.HasPrefix(r, "451 4.7.1") {
		t.Errorf("message 3, new session, after the reload: %q, want 451 4.7.1", r)
	}
	if r := d.connect("192.0.2.8", nil).message(); r != "" {
		t.Errorf("another client: %q", r)
	}
}

// A concurrency slot stays taken while its session is open, across a
// reload and the session's next message.
func TestReloadKeepsConcurrencySlots(t *testing.T) {
	d := start(t, `listen = "LISTEN"
filters = ["ratelimit"]
[[ratelimit.rule]]
event = "concurrency"
key = "client"
limit = 1
`)
	a := d.connect("192.0.2.7", nil)
	if r := a.message(); r != "" {
		t.Fatalf("message 1: %q", r)
	}
	d.reload()
	if r := a.message(); r != "" {
		t.Fatalf("message 2 on the open session: %q", r)
	}
	bag := milter.NewMacroBag()
	s, err := milter.NewClient("tcp", d.addr).Session(bag)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	act, err := s.Conn("client.example.org", milter.FamilyInet, 25001, "192.0.2.7")
	if err != nil {
		t.Fatal(err)
	}
	if !act.StopProcessing() || !strings.HasPrefix(act.SMTPReply, "451 4.7.1") {
		t.Fatalf("a second session while the first is open: %+v, want 451 4.7.1", act)
	}
}

// A session that came in through an exempt MTA listener (submission)
// stays exempt after a reload: the deny rule meant for strangers does not
// reach it.
func TestReloadKeepsExemptListener(t *testing.T) {
	d := start(t, `listen = "LISTEN"
filters = ["access"]
[access]
deny = ["192.0.2.0/24"]
exempt_daemons = ["submission"]
`)
	sub := d.connect("192.0.2.7", map[milter.MacroName]string{milter.MacroDaemonName: "submission"})
	if r := sub.message(); r != "" {
		t.Fatalf("message 1 through submission: %q", r)
	}
	d.reload()
	if r := sub.message(); r != "" {
		t.Errorf("message 2 through submission after the reload: %q, want accepted", r)
	}
	if r := d.connect("192.0.2.8", map[milter.MacroName]string{milter.MacroDaemonName: "smtpd"}).message(); !strings.HasPrefix(r, "550 5.7.1") {
		t.Errorf("a stranger through port 25: %q, want 550 5.7.1", r)
	}
}

// `mailguard reload` tells the truth: changes that wait for a restart are
// in the reload's status (which the command prints), and in the log; the
// log level changes at once.
func TestReloadSaysWhatWaitsForARestart(t *testing.T) {
	config := `listen = "LISTEN"
pid_file = "mailguard.pid"
idle_timeout = "10m"
[log]
level = "info"
`
	d := start(t, config)
	pid := filepath.Join(d.dir, "mailguard.pid")
	d.reload()
	st, err := pidfile.ReadStatus(pid)
	if err != nil || !st.OK || st.Message != "reloaded" {
		t.Fatalf("unchanged reload: %+v %v", st, err)
	}
	d.write(strings.NewReplacer(`idle_timeout = "10m"`, `idle_timeout = "5m"`, `level = "info"`, `level = "warn"`+"\nformat = \"json\"").Replace(config))
	st = reloadStatus(t, pid, st)
	want := "reloaded; these changes wait for a restart: idle_timeout 10m0s -> 5m0s; log.format text -> json"
	if !st.OK || st.Message != want {
		t.Fatalf("status %q\nwant   %q", st.Message, want)
	}
	if !strings.Contains(d.logs.String(), `msg="reload: these changes take effect after a restart" changes="[idle_timeout 10m0s -> 5m0s log.format text -> json]"`) {
		t.Errorf("log does not say what waits:\n%s", d.logs)
	}
	// The level is now warn: an accepted message's debug line and the
	// next reload's info line are not written.
	n := len(d.logs.String())
	d.connect("192.0.2.7", nil).message()
	reloadStatus(t, pid, st)
	if strings.Contains(d.logs.String()[n:], "level=INFO") {
		t.Errorf("info lines after log.level = \"warn\" was reloaded:\n%s", d.logs.String()[n:])
	}
}

// reloadStatus sends SIGHUP and waits for the reload status after prev.
func reloadStatus(t *testing.T, pid string, prev pidfile.Status) pidfile.Status {
	t.Helper()
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if st, err := pidfile.ReadStatus(pid); err == nil && st.Seq > prev.Seq {
			return st
		}
	}
	t.Fatal("no reload status")
	return prev
}

// Capture's switch is logged, with the folder, when the daemon notices
// it, and the reload line says whether capture is on.
func TestCaptureSwitchIsLogged(t *testing.T) {
	d := start(t, `listen = "LISTEN"
filters = ["capture"]
[capture]
switch = "capture.on"
dir = "captured"
`)
	sw, dir := filepath.Join(d.dir, "capture.on"), filepath.Join(d.dir, "captured")
	if !strings.Contains(d.logs.String(), `capture="off (no switch file `+sw+`); copies would go to `+dir+`"`) {
		t.Fatalf("start line does not say capture is off:\n%s", d.logs)
	}
	if err := os.WriteFile(sw, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	noticed := func(what string) func(string) bool {
		return func(s string) bool {
			if strings.Contains(s, what) {
				return true
			}
			d.connect("192.0.2.7", nil).message() // the daemon looks when mail comes
			return false
		}
	}
	d.waitLog(noticed(`msg="capture switched on: copying messages" switch=`+sw+` dir=`+dir), "capture switched on")
	d.reload()
	if !strings.Contains(d.logs.String(), `msg=reloaded filters=[capture] capture="ON: copying every message into `+dir) {
		t.Fatalf("reload line does not say capture is on:\n%s", d.logs)
	}
	os.Remove(sw)
	d.waitLog(noticed(`msg="capture switched off: no more copies" switch=`+sw+` dir=`+dir), "capture switched off")
	if n := strings.Count(d.logs.String(), "capture switched"); n != 2 {
		t.Fatalf("%d switch lines, want 2:\n%s", n, d.logs)
	}
}

// The daemon on built-in defaults listens where the README says
// (config.DefaultListen), and that port is free: no service the system's
// services database (netbase's /etc/services) registers, none of the
// ports other milters take by convention, and nothing on this machine
// holds it now.
func TestDefaultPortIsFree(t *testing.T) {
	addr, err := listen.Parse(config.DefaultListen)
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr.Address)
	for _, taken := range []string{"8891", "8893", "8894"} { // OpenDKIM, OpenDMARC, OpenARC
		if port == taken {
			t.Errorf("default listen %s is another milter's port", config.DefaultListen)
		}
	}
	services, err := os.ReadFile("/etc/services")
	if err != nil {
		t.Fatalf("the services database: %v", err)
	}
	_, httpPort, _ := net.SplitHostPort(config.DefaultHTTPListen)
	// Prometheus, its node exporter, our milter, and the port the README
	// gives the Dovecot policy door.
	if httpPort == "9090" || httpPort == "9100" || httpPort == port || httpPort == "8898" {
		t.Errorf("default http.listen %s is a port others take", config.DefaultHTTPListen)
	}
	for _, line := range strings.Split(string(services), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && !strings.HasPrefix(f[0], "#") && (f[1] == port+"/tcp" || f[1] == httpPort+"/tcp") {
			t.Errorf("default listen %s or http.listen %s: port registered for %q in /etc/services", config.DefaultListen, config.DefaultHTTPListen, f[0])
		}
	}

	logs := &syncBuffer{}
	ready := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Options{Stderr: logs, Ready: func(a string) { ready <- a }}) }()
	select {
	case got := <-ready:
		if got != addr.Address {
			t.Errorf("on built-in defaults the daemon listens on %s, not %s", got, addr.Address)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	case err := <-done:
		cancel()
		t.Fatalf("the daemon cannot take the default port %s: %v", addr.Address, err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatalf("the daemon did not start on built-in defaults:\n%s", logs)
	}
}

// An SMTP session keeps the signature set it started with; the next one
// gets the new set, also on a milter connection the MTA reuses
// (SMFIC_QUIT_NC: Postfix and Sendmail never do, other MTAs may).
func TestReloadAppliesFromTheNextSession(t *testing.T) {
	const worm = "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3"
	sigs := filepath.Join(t.TempDir(), "signatures")
	os.WriteFile(sigs, []byte("OLD =\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"), 0o644)
	d := start(t, `listen = "LISTEN"
[virus]
signatures = "`+sigs+`"
`)
	a := d.connect("192.0.2.7", nil)
	body := func() string {
		for _, st := range []func() (*milter.Action, error){
			func() (*milter.Action, error) { return a.s.Mail("sender@example.org", "") },
			func() (*milter.Action, error) { return a.s.Rcpt("user@example.edu", "") },
			func() (*milter.Action, error) { return a.s.DataStart() },
			func() (*milter.Action, error) { return a.s.HeaderEnd() },
			func() (*milter.Action, error) { return a.s.BodyChunk([]byte("x\r\n" + worm + "\r\n")) },
		} {
			if r := a.step(st); r != "" {
				return r
			}
		}
		_, act, err := a.s.End()
		if err != nil {
			t.Fatal(err)
		}
		if act.StopProcessing() {
			return act.SMTPReply
		}
		return ""
	}
	if r := body(); r != "" {
		t.Fatalf("refused before its signature was loaded: %q", r)
	}
	os.WriteFile(sigs, []byte("WORM =\n"+worm+"\n"), 0o644)
	d.reload()
	if r := body(); r != "" {
		t.Fatalf("the open session's set changed under it: %q", r)
	}
	if err := a.s.Reset(milter.NewMacroBag()); err != nil {
		t.Fatal(err)
	}
	a.step(func() (*milter.Action, error) {
		return a.s.Conn("client.example.org", milter.FamilyInet, 25002, "192.0.2.7")
	})
	a.step(func() (*milter.Action, error) { return a.s.Helo("client.example.org") })
	if r := body(); !strings.HasPrefix(r, "550 5.7.0") {
		t.Fatalf("the next session on the reused connection: %q, want 550 5.7.0", r)
	}
}
