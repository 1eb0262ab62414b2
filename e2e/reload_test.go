package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/d--j/go-milter"
)

const klez = "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

// milterVerdict sends one message with the library's milter client and
// returns the SMTP reply ("" for accept).
func milterVerdict(t *testing.T, port int, body string) string {
	t.Helper()
	return milterSession(t, port, "192.0.2.7", body)
}

func TestReloadOnSIGHUP(t *testing.T) {
	d := startMailguard(t, "listen = \"LISTEN\"\n[virus]\nsignatures = \"signatures\"\n",
		map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n"})
	sigs := filepath.Join(d.dir, "signatures")
	if r := milterVerdict(t, d.port, "x\r\n"+klez+"\r\n"); r != "" {
		t.Fatalf("KLEZ refused before it was loaded: %q", r)
	}

	// A new signature, then SIGHUP: refused from now on.
	os.WriteFile(sigs, []byte("WORM_SOBIG.B =\n"+sobig+"\nWORM_KLEZ.H =\n"+klez+"\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitForLog(t, d, "msg=reloaded")
	if r := milterVerdict(t, d.port, "x\r\n"+klez+"\r\n"); !strings.HasPrefix(r, "550 5.7.0") {
		t.Fatalf("KLEZ not refused after reload: %q", r)
	}

	// A broken file: the old set keeps running, and the log says why.
	os.WriteFile(sigs, []byte("WORM_SOBIG.B =\n"+sobig+"\nBROKEN = hex:zz\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitForLog(t, d, "reload failed")
	if got := d.lines("reload failed", "signatures:3: signature BROKEN: bad hex pattern"); len(got) != 1 {
		t.Errorf("reload failure not explained with file:line:\n%s", d.logs)
	}
	if r := milterVerdict(t, d.port, "x\r\n"+klez+"\r\n"); !strings.HasPrefix(r, "550 5.7.0") {
		t.Fatalf("a broken reload dropped the running signatures: %q", r)
	}

	// SIGTERM drains and exits cleanly.
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if len(d.lines("msg=stopped")) != 1 {
		t.Errorf("no stop line:\n%s", d.logs)
	}
}

func waitForLog(t *testing.T, d *daemon, words ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(d.lines(words...)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q:\n%s", words, d.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSummaryLine: every summary_interval the daemon logs messages seen
// and hits per signature since the last summary, then starts again.
func TestSummaryLine(t *testing.T) {
	d := startMailguard(t, "listen = \"LISTEN\"\n[log]\nsummary_interval = \"1s\"\n[virus]\nsignatures = \"signatures\"\n",
		map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n"})
	milterVerdict(t, d.port, "clean\r\n")
	milterVerdict(t, d.port, "x\r\n"+sobig+"\r\n")
	milterVerdict(t, d.port, sobig+"\r\n")
	// A tick may fall between the messages: add the summaries up.
	deadline := time.Now().Add(10 * time.Second)
	for {
		messages, hits, empty := 0, 0, 0
		for _, l := range d.lines("msg=summary") {
			var m int
			fmt.Sscanf(l[strings.Index(l, "messages=")+len("messages="):], "%d", &m)
			messages += m
			if i := strings.Index(l, "hits.virus.WORM_SOBIG.B="); i >= 0 {
				var h int
				fmt.Sscanf(l[i+len("hits.virus.WORM_SOBIG.B="):], "%d", &h)
				hits += h
			}
			if messages == 3 && m == 0 && !strings.Contains(l, "hits.") {
				empty++ // a summary after all three: the counts were reset
			}
		}
		if messages == 3 && hits == 2 && empty > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("summaries add up to %d messages and %d hits (want 3 and 2, then an empty one):\n%s", messages, hits, d.logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// `mailguard reload` signals the instance its configuration's pid_file
// names, and only that one, and says whether the reload worked.
func TestReloadCommand(t *testing.T) {
	files := map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n"}
	a := startMailguard(t, "listen = \"LISTEN\"\npid_file = \"mailguard.pid\"\n[virus]\nsignatures = \"signatures\"\n", files)
	b := startMailguard(t, "listen = \"LISTEN\"\npid_file = \"mailguard.pid\"\n[virus]\nsignatures = \"signatures\"\n", files)
	reload := func(d *daemon) (int, string) {
		cmd := exec.Command(filepath.Join(binDir, "mailguard"), "reload", "--config", filepath.Join(d.dir, "mailguard.toml"))
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return code, string(out)
	}
	waitForFile(t, filepath.Join(a.dir, "mailguard.pid"))
	if code, out := reload(a); code != 0 || !strings.Contains(out, "reloaded") {
		t.Fatalf("reload: exit %d\n%s", code, out)
	}
	os.WriteFile(filepath.Join(a.dir, "signatures"), []byte("BROKEN = hex:zz\n"), 0o644)
	if code, out := reload(a); code != 1 || !strings.Contains(out, "kept its previous configuration") || !strings.Contains(out, "BROKEN") {
		t.Fatalf("broken reload: exit %d\n%s", code, out)
	}
	if len(b.lines("msg=reloaded")) != 0 || len(b.lines("reload failed")) != 0 {
		t.Fatalf("the other instance was signalled:\n%s", b.logs)
	}
}

func waitForFile(t *testing.T, path string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s never appeared", path)
}

// TestJSONLogsAndFinalSummary: in JSON every line is one valid object, the
// decision's mail data is an object of its own (not a second "msg" key),
// the summary nests its counts by outcome and filter under stable names,
// and SIGTERM flushes the counts since the last summary.
func TestJSONLogsAndFinalSummary(t *testing.T) {
	d := startMailguard(t, "listen = \"LISTEN\"\n[log]\nformat = \"json\"\nsummary_interval = \"1h\"\n[virus]\nsignatures = \"signatures\"\n",
		map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n"})
	milterVerdict(t, d.port, "clean\r\n")
	milterVerdict(t, d.port, "x\r\n"+sobig+"\r\n")
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.cmd.Wait()
	var decision, summary, started map[string]any
	for _, line := range strings.Split(strings.TrimSpace(d.logs.String()), "\n") {
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Fatalf("not one JSON object: %v\n%s", err, line)
		}
		switch obj["msg"] {
		case "decision":
			decision = obj
		case "summary":
			summary = obj
		case "mailguard started":
			started = obj
		}
	}
	if started["virus"] != "1 signatures from "+filepath.Join(d.dir, "signatures") {
		t.Errorf("the start line does not say what was loaded: %v", started)
	}
	mail, _ := decision["mail"].(map[string]any)
	if mail == nil || mail["from"] != "a@example.org" || mail["client"] != "192.0.2.7" {
		t.Fatalf("decision without its mail object: %v", decision)
	}
	want := `{"final":true,"hits":{"virus":{"WORM_SOBIG.B":1}},"messages":2,"verdicts":{"accepted":1,"rejected":{"virus":1}}}`
	delete(summary, "time")
	delete(summary, "level")
	delete(summary, "msg")
	delete(summary, "interval")
	if got, _ := json.Marshal(summary); string(got) != want {
		t.Fatalf("final summary %s, want %s", got, want)
	}
}

// The reload story as a postmaster meets it, through the binary and
// `mailguard reload`: a rule of 1 message per client per minute; message
// 1 accepted; a reload (which also moves the listener, a change that
// waits for a restart, and says so); message 2 on the same SMTP session
// and message 3 on a new one are both refused 451.
func TestReloadKeepsLimits(t *testing.T) {
	config := `listen = "LISTEN"
pid_file = "mailguard.pid"
filters = ["ratelimit"]
[[ratelimit.rule]]
name = "msg-per-client"
event = "message"
key = "client"
limit = 1
window = "1m"
`
	d := startMailguard(t, config, nil)
	waitForFile(t, filepath.Join(d.dir, "mailguard.pid"))
	c := milter.NewClient("tcp", fmt.Sprintf("127.0.0.1:%d", d.port), milter.WithReadTimeout(30*time.Second))
	s, err := c.Session(milter.NewMacroBag())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Conn("client.example.org", milter.FamilyInet, 25000, "192.0.2.7"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Helo("client.example.org"); err != nil {
		t.Fatal(err)
	}
	mail := func() string {
		for _, step := range []func() (*milter.Action, error){
			func() (*milter.Action, error) { return s.Mail("a@example.org", "") },
			func() (*milter.Action, error) { return s.Rcpt("u@example.edu", "") },
			func() (*milter.Action, error) { return s.DataStart() },
			func() (*milter.Action, error) { return s.HeaderEnd() },
			func() (*milter.Action, error) { return s.BodyChunk([]byte("hello\r\n")) },
		} {
			act, err := step()
			if err != nil {
				t.Fatal(err)
			}
			if act.StopProcessing() {
				s.Abort(nil)
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
	if r := mail(); r != "" {
		t.Fatalf("message 1: %q", r)
	}

	cfg := filepath.Join(d.dir, "mailguard.toml")
	moved := strings.Replace(config, "LISTEN", "inet:127.0.0.1:1", 1)
	os.WriteFile(cfg, []byte(moved), 0o644)
	out, err := exec.Command(filepath.Join(binDir, "mailguard"), "reload", "--config", cfg).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "reloaded") ||
		!strings.Contains(string(out), fmt.Sprintf("these changes wait for a restart: listen inet:127.0.0.1:%d -> inet:127.0.0.1:1", d.port)) {
		t.Fatalf("mailguard reload (%v):\n%s", err, out)
	}

	if r := mail(); !strings.HasPrefix(r, "451 4.7.1") {
		t.Errorf("message 2, same session, after the reload: %q, want 451 4.7.1", r)
	}
	if r := milterSession(t, d.port, "192.0.2.7", "hello\r\n"); !strings.HasPrefix(r, "451 4.7.1") {
		t.Errorf("message 3, new session, after the reload: %q, want 451 4.7.1", r)
	}
}
