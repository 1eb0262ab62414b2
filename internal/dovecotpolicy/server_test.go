package dovecotpolicy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"mailguard/internal/ratecount"
)

func post(t testing.TB, url, body string, header ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestBadRequestsRefusedClearly(t *testing.T) {
	d := newDoor(t, guessingConfig(), ratecount.NewMemory(nil))
	cases := []struct {
		name, query, body string
		status            int
		says              string
	}{
		{"malformed JSON", "allow", `{"login":`, 400, "malformed JSON"},
		{"not an object", "allow", `[1,2]`, 400, "malformed JSON"},
		{"wrong type", "allow", `{"login":5}`, 400, "malformed JSON"},
		{"two values", "allow", `{} {}`, 400, "more than one value"},
		{"trailing text", "report", `{}x`, 400, "malformed JSON"},
		{"invalid UTF-8", "allow", "{\"login\":\"\xff\xfe\"}", 400, "not valid UTF-8"},
		{"unknown command", "flush", `{}`, 400, `unknown command "flush"`},
		{"no command", "", `{}`, 400, `unknown command ""`},
		{"huge body", "allow", `{"login":"` + strings.Repeat("a", 1<<20) + `"}`, 413, "larger than"},
	}
	for _, c := range cases {
		status, body := post(t, d.url+"/?command="+c.query, c.body)
		if status != c.status || !strings.Contains(body, c.says) {
			t.Errorf("%s: HTTP %d %q, want %d %q", c.name, status, body, c.status, c.says)
		}
	}
	if resp, err := http.Get(d.url + "/?command=allow"); err != nil || resp.StatusCode != 405 {
		t.Errorf("GET: %v %v", resp, err)
	}
	if n := d.stats.Take().Hits["dovecot_policy:bad request"]; n != uint64(len(cases)+1) {
		t.Errorf("counted %d bad requests", n)
	}
	// One log line, not one per request.
	if n := strings.Count(d.logs.String(), "bad request"); n != 1 {
		t.Errorf("%d log lines:\n%s", n, d.logs)
	}
	// A good request still works.
	if status, body := post(t, d.url+"/?command=allow", `{"login":"a","remote":"192.0.2.1"}`); status != 200 || body != `{"status":0,"msg":""}` {
		t.Errorf("good request: %d %s", status, body)
	}
}

func TestAPIKey(t *testing.T) {
	for _, key := range []string{"Authorization: Basic c2VjcmV0", "s3cret"} {
		c := guessingConfig()
		c.APIKey = key
		d := newDoor(t, c, ratecount.NewMemory(nil))
		name, value := "X-API-Key", key
		if n, v, ok := strings.Cut(key, ":"); ok {
			name, value = n, v
		}
		if status, _ := post(t, d.url+"/?command=allow", `{}`); status != 401 {
			t.Errorf("%q: no header: %d", key, status)
		}
		if status, _ := post(t, d.url+"/?command=allow", `{}`, name, value+"x"); status != 401 {
			t.Errorf("%q: wrong value: %d", key, status)
		}
		// Dovecot sends the value as written after the colon, blank included.
		if status, _ := post(t, d.url+"/?command=allow", `{}`, name, value); status != 200 {
			t.Errorf("%q: right header: %d", key, status)
		}
	}
}

// A client that sends its headers a byte at a time, or a body that never
// ends, is cut off; other clients are answered meanwhile.
func TestSlowClientCutOff(t *testing.T) {
	c := guessingConfig()
	log := newDoor(t, c, ratecount.NewMemory(nil)).h.log
	h := NewHandler(New(Options{Counter: ratecount.NewMemory(nil)}), c, log, nil)
	srv := httptest.NewUnstartedServer(h)
	srv.Config = newServer(h, log, 300*time.Millisecond) // the door's server, with a shorter read time
	srv.Start()
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /?command=allow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
	if status, _ := post(t, srv.URL+"/?command=allow", `{}`); status != 200 {
		t.Fatalf("another client: %d", status)
	}
	// Cut off: an error answer, or the connection closed, well before
	// the test's own 5 s.
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the slow client was never cut off")
	}
	if err == nil && !strings.Contains(line, "400") {
		t.Fatalf("the slow client got %q", line)
	}
}

// Many large bad requests at once: memory stays bounded by the body limit.
func TestBoundedMemory(t *testing.T) {
	d := newDoor(t, guessingConfig(), ratecount.NewMemory(nil))
	body := strings.Repeat("x", 4<<20)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	done := make(chan struct{})
	for i := 0; i < 20; i++ {
		go func() {
			defer func() { done <- struct{}{} }()
			resp, err := http.Post(d.url+"/?command=allow", "application/json", strings.NewReader(body))
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	for i := 0; i < 20; i++ {
		<-done
	}
	runtime.ReadMemStats(&after)
	// The clients send 80 MB from one shared string; the server reads at
	// most 16 KB of each, so all allocations together stay far below.
	if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 40<<20 {
		t.Errorf("%d MB allocated for 20 requests of 4 MB", allocated>>20)
	}
}

func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		`{"login":"alice","pwhash":"abc","remote":"192.0.2.1","protocol":"pop3","session_id":"x"}`,
		`{"login":"alice","pwhash":"abc","remote":"::ffff:192.0.2.1","success":false,"policy_reject":false}`,
		`{"login":"a","remote":"2001:db8::1","attrs":{"cos":"x"}}`,
		`{"login":`, "\xff", `{"remote":"300.1.1.1"}`, `{"login":"` + strings.Repeat("a", 400) + `"}`,
	} {
		f.Add("allow", s)
		f.Add("report", s)
	}
	c := guessingConfig()
	c.Rules = append(c.Rules, RuleConfig{Name: "user", Event: "login", Key: "user", Limit: 3, Window: "1m", Action: "reject"},
		RuleConfig{Name: "net", Event: "failure", Key: "network", Limit: 3, Window: "1m", Action: "delay:1s"})
	d := newDoor(f, c, ratecount.NewMemory(nil))
	f.Fuzz(func(t *testing.T, command, body string) {
		req := httptest.NewRequest("POST", "/?command="+url.QueryEscape(command), strings.NewReader(body))
		w := httptest.NewRecorder()
		d.h.ServeHTTP(w, req)
		switch w.Code {
		case 200:
			if !strings.HasPrefix(w.Body.String(), `{"status":`) {
				t.Fatalf("answer %q", w.Body.String())
			}
		case 400, 413:
		default:
			t.Fatalf("HTTP %d for %q", w.Code, body)
		}
	})
}

func urlQueryEscape(s string) string {
	return strings.NewReplacer("%", "%25", "&", "%26", "#", "%23", " ", "%20", "+", "%2B").Replace(s)
}
