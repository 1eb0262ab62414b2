package virus

import (
	"context"
	"strings"
	"testing"

	"mailguard/internal/sigfile"
	"mailguard/internal/verdict"
)

var ctx = context.Background()

const sobig = "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3"

func filter(t *testing.T, opts Options) *Filter {
	t.Helper()
	sigs, err := sigfile.Parse("s", strings.NewReader("WORM_SOBIG.B =\n"+sobig+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(sigs, opts)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestReplyText(t *testing.T) {
	cases := []struct {
		opts Options
		want string
	}{
		{Options{}, "VIRUS FOUND"},
		{Options{Reply: "Worm refused"}, "Worm refused"},
		{Options{IncludeName: true}, "VIRUS FOUND: WORM_SOBIG.B"},
	}
	for _, c := range cases {
		f := filter(t, c.opts)
		chk, _ := f.NewCheck(ctx, nil)
		chk.Body(ctx, []byte("abc\r\n"+sobig[:30]))
		v, _ := chk.Body(ctx, []byte(sobig[30:]+"\r\n"))
		chk.Close()
		code, enh, text := v.Reply()
		if v.Action != verdict.Reject || code != 550 || enh != "5.7.0" || text != c.want || v.Reason != "WORM_SOBIG.B" {
			t.Errorf("%+v: got %v %d %s %q reason %q", c.opts, v.Action, code, enh, text, v.Reason)
		}
	}
}

// Scanners are pooled: a check closed after a hit must not leave that hit
// to the next message.
func TestPooledScannerIsReset(t *testing.T) {
	f := filter(t, Options{})
	for i := 0; i < 50; i++ {
		chk, _ := f.NewCheck(ctx, nil)
		v, _ := chk.Body(ctx, []byte(sobig[:40]))
		if v.Final() {
			t.Fatal("half a signature matched")
		}
		if i%2 == 0 {
			v, _ = chk.Body(ctx, []byte(sobig[40:]))
			if !v.Final() {
				t.Fatal("signature across two chunks missed")
			}
		}
		chk.Close()
	}
	chk, _ := f.NewCheck(ctx, nil)
	if v, _ := chk.Body(ctx, []byte(sobig[40:]+" clean")); v.Final() {
		t.Fatal("the second half alone matched: scanner state leaked between messages")
	}
	chk.Close()
}
