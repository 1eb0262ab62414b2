package webstatus

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode"

	"mailguard/internal/metrics"
)

// FuzzStatusText: whatever strings SMTP clients choose (address, sender,
// recipient, and what a filter's reason repeats of them), `mailguard
// status` prints them, through /status.json, without a control
// character: nothing of theirs can move the cursor or recolour the
// terminal.
func FuzzStatusText(f *testing.F) {
	f.Add("192.0.2.1", "a@b.example", "u@example.edu", "blocked")
	f.Add("\x1b[2J\x1b[H", "\x1b]0;owned\x07@x", "u@x\r\nX-Fake: 1", "\u202eexe.pdf")
	f.Add("[ipv6:2001:db8::1]", "\x00\xff", "\u0085\u2028", "\x9b31m")
	f.Fuzz(func(t *testing.T, client, from, rcpt, reason string) {
		a := metrics.NewActivity(nil)
		a.Decision(metrics.Decision{Client: client, From: from, Rcpts: []string{rcpt, from}, Verdict: "reject 550 5.7.1 " + reason,
			Filter: "senders", Reason: reason, Key: "senders:" + reason})
		snap := &Snapshot{Now: time.Now(), Started: time.Now(), Recent: a.Recent(), Config: ConfigState{OK: true}}
		snap.TopHits = []Count{{Key: "senders:" + reason, Value: 1}}
		snap.LastHour.Refusals = []Count{{Key: "senders:" + reason, Value: 1}}
		body, err := json.Marshal(snap)
		if err != nil {
			t.Fatal(err)
		}
		got := fetchText(t, body)
		if got == nil {
			t.Fatal("the daemon's own status.json did not read back")
		}
		if i := bytes.IndexFunc(got, func(r rune) bool { return unicode.IsControl(r) && r != '\n' }); i >= 0 {
			t.Fatalf("a control character at %d: %q", i, got)
		}
	})
}

// FuzzStatusJSON: whatever a status URL answers, `mailguard status`
// neither panics nor hangs: the body reads as a snapshot or is an error
// that names the URL.
func FuzzStatusJSON(f *testing.F) {
	a := metrics.NewActivity(nil)
	a.Decision(metrics.Decision{Client: "192.0.2.1", From: "a@b", Rcpts: []string{"u@x"}, Verdict: "reject", Filter: "virus", Reason: "Sobig.B"})
	up := true
	snap := &Snapshot{Now: time.Now(), Started: time.Now().Add(-time.Hour), Version: "1.0", Recent: a.Recent(), CaptureOn: &up,
		Config:  ConfigState{OK: true, File: "/etc/mailguard/mailguard.toml", Filters: []string{"virus", "quota"}},
		Health:  []Health{{Name: "clamav", Target: "unix:/run/clamd.sock", Up: true, PingSeconds: 0.001}},
		TopHits: []Count{{Key: "virus:Sobig.B", Value: 3}}}
	full, _ := json.Marshal(snap)
	f.Add(full)
	f.Add([]byte(`{"recent":[{"rcpts":null,"more":-5}],"health":[{}],"capture_switch_on":null}`))
	f.Add([]byte(`{"now":"0000-01-01T00:00:00Z","started":"9999-12-31T23:59:59Z","sessions_in_flight":1e308}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"recent":[` + strings.Repeat(`{},`, 100) + `{}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		fetchText(t, body)
	})
}

// fetchText serves body as /status.json and returns what `mailguard
// status` prints of it, nil when Fetch refused it.
func fetchText(t *testing.T, body []byte) []byte {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	defer srv.Close()
	snap, err := Fetch(srv.Client(), srv.URL, Auth{})
	if err != nil {
		if !strings.Contains(err.Error(), srv.URL) {
			t.Fatalf("an error without the URL: %v", err)
		}
		return nil
	}
	var out bytes.Buffer
	snap.Healthy()
	snap.WriteText(&out, 20)
	return out.Bytes()
}
