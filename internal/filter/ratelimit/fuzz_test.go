package ratelimit

import (
	"strings"
	"testing"
	"time"
)

// FuzzRule reads a [[ratelimit.rule]] as written: a rule taken has a
// known event and key that go together, a limit of 1 or more, a window
// from 1 s to a week (none for concurrency), a positive tarpit delay only
// when the action starts with one, the refusal the action names, and a
// name.
func FuzzRule(f *testing.F) {
	f.Add("", "message", "client", int64(30), "1m", "tempfail")
	f.Add("burst", "recipient", "recipient", int64(100), "1h", "tarpit:10s,reject")
	f.Add("", "concurrency", "network", int64(5), "", "reject")
	f.Add("", "connection", "sender", int64(5), "1m", "tarpit:5s")
	f.Add("", "byte", "sender", int64(1<<30), "168h0m1s", "tarpit:-1s")
	f.Add("", "message", "client", int64(0), "0.5s", "tarpit:1s,tarpit:1s")
	f.Fuzz(func(t *testing.T, name, event, key string, limit int64, window, action string) {
		rc := RuleConfig{Name: name, Event: event, Key: key, Limit: limit, Window: window, Action: action}
		r, err := rc.parse()
		if err != nil {
			return
		}
		if _, ok := events[event]; !ok || r.Key != Key(key) || r.Limit < 1 || r.Limit != limit || r.Name == "" || (name != "" && r.Name != name) {
			t.Fatalf("%+v read as %+v", rc, r)
		}
		if r.Event == Concurrency {
			if r.Window != 0 || window != "" || (r.Key != KeyClient && r.Key != KeyNetwork) {
				t.Fatalf("%+v read as %+v", rc, r)
			}
		} else if r.Window < time.Second || r.Window > 7*24*time.Hour {
			t.Fatalf("window %q read as %s", window, r.Window)
		}
		tarpit := strings.HasPrefix(action, "tarpit:")
		if tarpit != (r.Delay > 0) || r.Delay < 0 {
			t.Fatalf("action %q: delay %s", action, r.Delay)
		}
		last := action[strings.LastIndexByte(action, ',')+1:]
		want := map[string]Refusal{"": RefuseTempFail, "tempfail": RefuseTempFail, "reject": RefuseReject}[last]
		if tarpit && !strings.Contains(action, ",") {
			want = RefuseNone
		}
		if r.Refusal != want {
			t.Fatalf("action %q: refusal %v, want %v", action, r.Refusal, want)
		}
	})
}
