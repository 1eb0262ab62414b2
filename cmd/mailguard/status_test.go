package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/daemon"
	"mailguard/internal/testserver"
	"mailguard/internal/webstatus"
)

// serveForStatus runs the daemon on config until the test ends and
// returns its milter address.
func serveForStatus(t *testing.T, file string) string {
	ready := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, daemon.Options{ConfigFile: file, AllowRoot: true, Stderr: &testserver.LockedBuffer{}, Ready: func(a string) { ready <- a }, Version: "test"})
	}()
	select {
	case a := <-ready:
		t.Cleanup(func() { cancel(); <-done })
		return a
	case err := <-done:
		cancel()
		t.Fatalf("daemon: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("daemon did not start")
	}
	return ""
}

// sendVia sends one message over the milter protocol; it reports the
// refusal, "" when accepted.
func sendVia(t *testing.T, addr, from, body string) string {
	t.Helper()
	s, err := milter.NewClient("tcp", addr).Session(milter.NewMacroBag())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, st := range []func() (*milter.Action, error){
		func() (*milter.Action, error) {
			return s.Conn("client.example.org", milter.FamilyInet, 25000, "192.0.2.9")
		},
		func() (*milter.Action, error) { return s.Helo("client.example.org") },
		func() (*milter.Action, error) { return s.Mail(from, "") },
		func() (*milter.Action, error) { return s.Rcpt("user@example.edu", "") },
		func() (*milter.Action, error) { return s.DataStart() },
		func() (*milter.Action, error) { return s.HeaderEnd() },
		func() (*milter.Action, error) { return s.BodyChunk([]byte(body)) },
	} {
		act, err := st()
		if err != nil {
			t.Fatal(err)
		}
		if act.StopProcessing() {
			return act.SMTPReply
		}
	}
	_, act, err := s.End()
	if err != nil {
		t.Fatal(err)
	}
	if act.StopProcessing() {
		return act.SMTPReply
	}
	return ""
}

// status reads the listener the configuration names, shows the known
// traffic, escapes a sender's terminal control sequence, and exits 1
// when a service the filters use is down (Redis, here: nothing listens).
func TestStatusCommand(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "mailguard.toml")
	deadRedis := testserver.FreePort(t)
	writeFile(t, file, fmt.Sprintf(`listen = "inet:127.0.0.1:%d"
filters = ["virus", "ratelimit"]
[ratelimit]
backend = "redis://127.0.0.1:%d/0"
[[ratelimit.rule]]
name = "per-client"
event = "message"
key = "client"
limit = 100
window = "1m"
action = "tempfail"
[http]
listen = "127.0.0.1:%d"
`, testserver.FreePort(t), deadRedis, testserver.FreePort(t)))
	addr := serveForStatus(t, file)
	if r := sendVia(t, addr, "a@example.org", "hello\r\n"); r != "" {
		t.Fatalf("clean message: %s", r)
	}
	const hostile = "\x1b[2J\x1b[31mevil@x"
	if r := sendVia(t, addr, hostile, "x\r\n"+sobig+"\r\n"); !strings.HasPrefix(r, "550") {
		t.Fatalf("worm: %q", r)
	}
	code, out, errOut := runCLI("status", "--config", file)
	if code != 1 {
		t.Errorf("status exit %d with Redis down, want 1; stderr:\n%s", code, errOut)
	}
	for _, want := range []string{
		"messages: 2 since start, 2 in the last hour",
		"configuration: loaded",
		"filters: virus, ratelimit",
		fmt.Sprintf("ratelimit redis 127.0.0.1:%d: DOWN", deadRedis),
		"1  virus:WORM_SOBIG.B",
		"<\\x1b[2J\\x1b[31mevil@x> -> user@example.edu  reject 550 5.7.0 VIRUS FOUND",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q", want)
		}
	}
	if strings.Contains(out, "\x1b") {
		t.Errorf("status output holds a raw escape character")
	}
	if t.Failed() {
		t.Logf("status output:\n%s", out)
	}

	code, out, _ = runCLI("status", "--config", file, "--json")
	var snap webstatus.Snapshot
	if err := json.Unmarshal([]byte(out), &snap); err != nil || code != 1 || snap.Messages != 2 {
		t.Errorf("status --json: exit %d, %v, messages %v", code, err, snap.Messages)
	}
}

// With nothing listening, status says so and exits 2.
func TestStatusUnreachable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "mailguard.toml")
	writeFile(t, file, fmt.Sprintf("[http]\nlisten = \"127.0.0.1:%d\"\n", testserver.FreePort(t)))
	if code, _, errOut := runCLI("status", "--config", file); code != 2 || !strings.Contains(errOut, "connection refused") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}
