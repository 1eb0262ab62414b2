package attachments

import (
	"errors"
	"testing"

	"mailguard/internal/mimewalk"
	"mailguard/internal/stats"
	"mailguard/internal/verdict"
)

// on_malformed: MIME the parser cannot follow. Broken header and
// boundary lines are read as mail clients read them, so no message is
// known to reach this; the policy still holds if one does.
func TestMalformedPolicy(t *testing.T) {
	malformed := &mimewalk.MalformedError{Err: errors.New("multipart: something new")}
	for _, c := range []struct {
		policy  Policy
		code    int
		counted uint64
	}{
		{PolicyAccept, 0, 1},
		{PolicyTempFail, 451, 0},
		{PolicyReject, 554, 0},
	} {
		counter := stats.NewCounter()
		f := New(Options{BlockNames: []string{"*.exe"}, OnMalformed: c.policy, Stats: counter})
		v, unchecked, err := f.outcome(malformed)
		if err != nil || v.Code != c.code || c.code == 0 && (v.Final() || unchecked == "") {
			t.Fatalf("policy %d: %v %q %v", c.policy, v, unchecked, err)
		}
		if c.code != 0 && (v.Key != "malformed MIME" || v.Action == verdict.Pass.Action) {
			t.Fatalf("policy %d: key %q", c.policy, v.Key)
		}
		if n := counter.Take().Hits["attachments:not checked: malformed MIME"]; n != c.counted {
			t.Fatalf("policy %d: counted %d", c.policy, n)
		}
	}
}
