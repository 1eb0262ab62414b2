package daemon

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/pidfile"
	"mailguard/internal/testserver"
	"mailguard/internal/webstatus"
)

const testWorm = "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3"

// send sends one message from sender with body and returns the refusal's
// reply, "" when accepted.
func (m *smtp) send(sender, rcpt, body string) string {
	m.t.Helper()
	s := m.s
	for _, st := range []func() (*milter.Action, error){
		func() (*milter.Action, error) { return s.Mail(sender, "") },
		func() (*milter.Action, error) { return s.Rcpt(rcpt, "") },
		func() (*milter.Action, error) { return s.DataStart() },
		func() (*milter.Action, error) { return s.HeaderField("Subject", "hello", nil) },
		func() (*milter.Action, error) { return s.HeaderEnd() },
		func() (*milter.Action, error) { return s.BodyChunk([]byte(body)) },
	} {
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

func httpGet(t *testing.T, url, user, pass string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Known traffic (3 clean messages, 2 with a signature, one of them from a
// hostile sender) gives these counters, the same facts on /status.json,
// and a page that shows the hostile sender as text.
func TestMetricsAfterKnownTraffic(t *testing.T) {
	sigs := filepath.Join(t.TempDir(), "signatures")
	os.WriteFile(sigs, []byte("W32/TEST.A =\n"+testWorm+"\n"), 0o644)
	port := testserver.FreePort(t)
	d := start(t, fmt.Sprintf(`listen = "LISTEN"
filters = ["virus"]
[virus]
signatures = %q
[http]
listen = "127.0.0.1:%d"
`, sigs, port))
	if d.http != fmt.Sprintf("127.0.0.1:%d", port) {
		t.Fatalf("HTTP listener on %q", d.http)
	}
	const hostile = `<script>alert(1)</script>@x`
	a := d.connect("192.0.2.7", nil)
	for range 3 {
		if r := a.send("a@example.org", "user@example.edu", "hello\r\n"); r != "" {
			t.Fatalf("clean message refused: %s", r)
		}
	}
	for _, from := range []string{"b@example.org", hostile} {
		if r := a.send(from, "user@example.edu", "x\r\n"+testWorm+"\r\n"); !strings.HasPrefix(r, "550 5.7.0") {
			t.Fatalf("worm from %s: %q", from, r)
		}
	}
	base := "http://" + d.http
	code, text := httpGet(t, base+"/metrics", "", "")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		"mailguard_messages_total 5\n",
		`mailguard_verdicts_total{filter="",outcome="accepted"} 3` + "\n",
		`mailguard_verdicts_total{filter="virus",outcome="rejected"} 2` + "\n",
		`mailguard_hits_total{filter="virus",reason="W32/TEST.A"} 2` + "\n",
		"mailguard_virus_signatures 1\n",
		`mailguard_filter_call_duration_seconds_count{filter="virus",stage="body"} 5` + "\n",
		`mailguard_stage_duration_seconds_count{stage="eom"} 5` + "\n",
		`mailguard_reloads_total{result="failed"} 0` + "\n",
		"mailguard_config_last_reload_success 1\n",
		`mailguard_build_info{version="test"} 1` + "\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", text)
	}

	_, js := httpGet(t, base+"/status.json", "", "")
	var snap webstatus.Snapshot
	if err := json.Unmarshal([]byte(js), &snap); err != nil {
		t.Fatal(err)
	}
	if snap.Messages != 5 || snap.LastHour.Messages != 5 || len(snap.LastHour.Refusals) != 1 ||
		snap.LastHour.Refusals[0] != (webstatus.Count{Key: "virus:W32/TEST.A", Value: 2}) {
		t.Errorf("status.json: messages %v, last hour %+v", snap.Messages, snap.LastHour)
	}
	if len(snap.Recent) != 5 || snap.Recent[0].From != hostile || snap.Recent[0].Client != "192.0.2.7" ||
		!strings.HasPrefix(snap.Recent[0].Verdict, "reject 550") {
		t.Errorf("recent decisions: %+v", snap.Recent)
	}

	code, page := httpGet(t, base+"/", "", "")
	if code != 200 {
		t.Fatalf("/: %d", code)
	}
	if strings.Contains(page, "<script>") || !strings.Contains(page, "&lt;script&gt;alert(1)&lt;/script&gt;@x") {
		t.Errorf("the hostile sender is not shown escaped:\n%s", page)
	}
	for _, want := range []string{"virus:W32/TEST.A", "<svg", "192.0.2.7"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}

	// A broken file: the reload fails, and the metrics say so.
	os.WriteFile(sigs, []byte("no signature here\n"), 0o644)
	before := strings.Count(d.logs.String(), "reload failed")
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	d.waitLog(func(s string) bool { return strings.Count(s, "reload failed") > before }, "reload failed")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, text = httpGet(t, base+"/metrics", "", "")
		if strings.Contains(text, `mailguard_reloads_total{result="failed"} 1`) && strings.Contains(text, "mailguard_config_last_reload_success 0\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a failed reload:\n%s", text)
		}
	}
}

// Basic auth, when set, guards every path.
func TestHTTPBasicAuth(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "http.password")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	port := testserver.FreePort(t)
	d := start(t, fmt.Sprintf(`listen = "LISTEN"
[http]
listen = "127.0.0.1:%d"
user = "pm"
password_file = %q
`, port, pw))
	for _, path := range []string{"/", "/metrics", "/status.json"} {
		if code, _ := httpGet(t, "http://"+d.http+path, "", ""); code != 401 {
			t.Errorf("%s without credentials: %d, want 401", path, code)
		}
		if code, _ := httpGet(t, "http://"+d.http+path, "pm", "wrong"); code != 401 {
			t.Errorf("%s with a wrong password: %d, want 401", path, code)
		}
		if code, _ := httpGet(t, "http://"+d.http+path, "pm", "s3cret"); code != 200 {
			t.Errorf("%s with the password: %d, want 200", path, code)
		}
	}
}

// clamd, Redis and the DNS server are probed at each scrape: up with
// their round trip while they answer, down when one stops.
func TestHealthMetrics(t *testing.T) {
	clamd := testserver.StartClamd(t, testserver.ClamdOptions{})
	redis := testserver.StartRedis(t)
	dns := testserver.StartDNS(t, "bl.test", map[string]string{"2.0.0.127": "127.0.0.2"})
	port := testserver.FreePort(t)
	d := start(t, fmt.Sprintf(`listen = "LISTEN"
filters = ["access", "ratelimit", "clamav"]
[access]
dnsbl = ["bl.test"]
dns_server = %q
[ratelimit]
backend = %q
[[ratelimit.rule]]
name = "per-client"
event = "message"
key = "client"
limit = 1
window = "1m"
action = "tempfail"
[clamav]
address = %q
clamd_config = ""
[http]
listen = "127.0.0.1:%d"
`, dns.Server(), redis.URL(), clamd.Address(), port))
	metricsText := func() string { _, s := httpGet(t, "http://"+d.http+"/metrics", "", ""); return s }
	a := d.connect("192.0.2.7", nil)
	if r := a.send("a@example.org", "user@example.edu", "hello\r\n"); r != "" {
		t.Fatalf("first message: %s", r)
	}
	if r := a.send("a@example.org", "user@example.edu", "hello\r\n"); !strings.HasPrefix(r, "451 4.7.1") {
		t.Fatalf("second message over the limit of 1: %q", r)
	}
	// The refused message is counted when it ends (the MTA's abort), which
	// may come after the reply the client has read.
	text := metricsText()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(text, `outcome="tempfailed"`) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		text = metricsText()
	}
	for _, want := range []string{
		`mailguard_hits_total{filter="ratelimit",reason="per-client"} 1`,
		`mailguard_verdicts_total{filter="ratelimit",outcome="tempfailed"} 1`,
		fmt.Sprintf(`mailguard_access_dns_up{target=%q} 1`, dns.Server()),
		fmt.Sprintf(`mailguard_ratelimit_redis_up{target="127.0.0.1:%d"} 1`, redis.Port),
		fmt.Sprintf(`mailguard_clamav_clamd_up{target=%q} 1`, clamd.Address()),
		`mailguard_clamav_clamd_ping_seconds{target=`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	redis.Stop()
	clamd.Stop()
	dns.Pause()
	defer dns.Resume()
	text = metricsText()
	for _, want := range []string{
		fmt.Sprintf(`mailguard_access_dns_up{target=%q} 0`, dns.Server()),
		fmt.Sprintf(`mailguard_ratelimit_redis_up{target="127.0.0.1:%d"} 0`, redis.Port),
		fmt.Sprintf(`mailguard_clamav_clamd_up{target=%q} 0`, clamd.Address()),
	} {
		if !strings.Contains(text, want) {
			t.Errorf("with Redis, clamd and DNS stopped, /metrics lacks %q", want)
		}
	}
	_, page := httpGet(t, "http://"+d.http+"/", "", "")
	if n := strings.Count(page, ">DOWN<"); n != 3 {
		t.Errorf("the page shows %d services down, want 3", n)
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", text)
	}
}

// Capture's switch and copies; a reload (a new filter, counting from
// zero) does not send the copies' total back.
func TestCaptureMetrics(t *testing.T) {
	port := testserver.FreePort(t)
	d := start(t, fmt.Sprintf(`listen = "LISTEN"
filters = ["capture"]
[capture]
switch = "capture.on"
dir = "captured"
[http]
listen = "127.0.0.1:%d"
`, port))
	metricsText := func() string { _, s := httpGet(t, "http://"+d.http+"/metrics", "", ""); return s }
	if text := metricsText(); !strings.Contains(text, "mailguard_capture_switch_on 0\n") {
		t.Fatalf("switch off, /metrics:\n%s", text)
	}
	os.WriteFile(filepath.Join(d.dir, "capture.on"), nil, 0o644)
	time.Sleep(1100 * time.Millisecond) // capture looks at its switch at most once a second
	a := d.connect("192.0.2.7", nil)
	a.send("a@example.org", "user@example.edu", "hello\r\n")
	a.send("a@example.org", "user@example.edu", "hello\r\n")
	text := metricsText()
	if !strings.Contains(text, "mailguard_capture_switch_on 1\n") || !strings.Contains(text, `mailguard_capture_writes_total{result="written"} 2`+"\n") {
		t.Fatalf("switch on, 2 copies, /metrics:\n%s", text)
	}
	a.send("a@example.org", "user@example.edu", "hello\r\n") // not scraped before the reload
	d.reload()
	d.connect("192.0.2.8", nil).send("a@example.org", "user@example.edu", "hello\r\n")
	if text := metricsText(); !strings.Contains(text, `mailguard_capture_writes_total{result="written"} 4`+"\n") {
		t.Fatalf("after a reload and one more copy, /metrics:\n%s", text)
	}
}

// A new [http] waits for a restart, and the reload says so; the listener
// stays where it was.
func TestReloadSaysHTTPWaitsForARestart(t *testing.T) {
	a, b := testserver.FreePort(t), testserver.FreePort(t)
	config := "listen = \"LISTEN\"\npid_file = \"mailguard.pid\"\n[http]\nlisten = \"127.0.0.1:%d\"\n"
	d := start(t, fmt.Sprintf(config, a))
	d.write(fmt.Sprintf(config, b))
	st := reloadStatus(t, filepath.Join(d.dir, "mailguard.pid"), pidfile.Status{})
	want := fmt.Sprintf(`reloaded; these changes wait for a restart: http "127.0.0.1:%d" "" "" -> "127.0.0.1:%d" "" ""`, a, b)
	if !st.OK || st.Message != want {
		t.Fatalf("status %q\nwant   %q", st.Message, want)
	}
	if code, _ := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", a), "", ""); code != 200 {
		t.Errorf("the listener moved: %d", code)
	}
}
