package senders

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"mailguard/etc"
	"mailguard/internal/pipeline"
	"mailguard/internal/verdict"
)

var ctx = context.Background()

func exampleList(t *testing.T) *Blocklist {
	t.Helper()
	b, err := Parse("blocklist.example", bytes.NewReader(etc.ExampleBlocklist), "+")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBlocks(t *testing.T) {
	b := exampleList(t)
	cases := []struct {
		rcpt, sender string
		want         bool
	}{
		{"alice@example.edu", "spammer@example.com", true},
		{"Alice+news@Example.EDU", "SPAMMER@EXAMPLE.COM", true},
		{"alice@example.edu", "<spammer@example.com>", true},
		{"alice@example.edu", "friend@example.com", false},
		{"alice@example.edu", "x@marketing.example.net", true},    // @domain
		{"alice@example.edu", "x@eu.marketing.example.net", true}, // *.domain
		{"alice@example.edu", "x@notmarketing.example.net", false},
		{"alice@example.edu", "x@example.net", false},
		{"bob@example.edu", "spammer@example.com", false}, // not on bob's list
		{"bob@example.edu", "ex@example.org", true},
		{"carol@example.edu", "spammer@example.com", false}, // carol did not opt in
		{"alice@example.edu", "", false},                    // bounces are never blocked
		{"alice@example.edu", "not an address", false},
		{"../../etc/passwd@example.edu", "spammer@example.com", false},
	}
	for _, c := range cases {
		if got := b.Blocks(c.rcpt, c.sender); got != c.want {
			t.Errorf("Blocks(%q, %q) = %v, want %v", c.rcpt, c.sender, got, c.want)
		}
	}
	if !b.Opted("alice@example.edu") || b.Opted("carol@example.edu") {
		t.Error("Opted")
	}
}

func TestParseErrors(t *testing.T) {
	_, err := Parse("bl", strings.NewReader("alice@example.edu\nnobody x@y.org\nalice@example.edu @bad..\nalice@example.edu *.\nalice@example.edu a b\n"), "+")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"bl:1: want RECIPIENT PATTERN", "bl:2: recipient \"nobody\"", "bl:3: pattern", "bl:4: pattern", "bl:5: want"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in\n%v", want, err)
		}
	}
}

func TestFromAddresses(t *testing.T) {
	cases := map[string][]string{
		`"Bob (boss)" <bob@example.org>`:           {"bob@example.org"},
		`bob@example.org (Bob)`:                    {"bob@example.org"},
		`=?utf-8?q?J=C3=B6rg?= <jorg@example.org>`: {"jorg@example.org"},
		`=?koi8-r?b?8NLJ18XU?= <ivan@example.ru>`:  {"ivan@example.ru"},
		`friends: a@x.org, b@y.org;`:               {"a@x.org", "b@y.org"},
		`a@x.org, "C, D" <c@z.org>`:                {"a@x.org", "c@z.org"},
		"Bob\r\n <bob@example.org>":                {"bob@example.org"},
		`undisclosed-recipients:;`:                 {},
		`not an address`:                           nil,
		`<unterminated@example.org`:                {"unterminated@example.org"},
	}
	for in, want := range cases {
		got := FromAddresses(in)
		if len(got) == 0 && len(want) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}

func run(t *testing.T, f *Filter, from string, rcpts ...string) (verdict.Verdict, *pipeline.Envelope) {
	t.Helper()
	env := &pipeline.Envelope{From: "envelope@example.com", Rcpts: rcpts}
	chk, _ := f.NewCheck(ctx, env)
	chk.Header(ctx, "Subject", "hi")
	chk.Header(ctx, "From", from)
	v, err := chk.EndOfHeaders(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	return v, env
}

func TestHeaderFrom(t *testing.T) {
	f := New(Options{List: exampleList(t)})
	// Every remaining recipient blocks it: the message is refused.
	v, _ := run(t, f, "Spam <spammer@example.com>", "alice@example.edu")
	if code, enh, _ := v.Reply(); v.Action != verdict.Reject || code != 550 || enh != "5.7.1" {
		t.Fatalf("all block: %v", v)
	}
	// Some do: those are removed, the others keep the message.
	v, env := run(t, f, "Spam <spammer@example.com>", "alice@example.edu", "carol@example.edu")
	if v.Final() || !reflect.DeepEqual(env.Rcpts, []string{"carol@example.edu"}) || len(env.Removed) != 1 || env.Removed[0].Rcpt != "alice@example.edu" {
		t.Fatalf("some block: %v rcpts %v removed %v", v, env.Rcpts, env.Removed)
	}
	// An unparseable From: is judged by the addresses it shows; one that
	// shows none never matches, never errors.
	if v, _ := run(t, f, "spammer@example.com <<<", "alice@example.edu"); v.Action != verdict.Reject {
		t.Fatalf("unparseable From: %v", v)
	}
	if v, env := run(t, f, "spammer at example.com <<<", "alice@example.edu"); v.Final() || len(env.Removed) != 0 {
		t.Fatalf("From: without an address: %v", v)
	}
	// Envelope sender at RCPT: only the blocking recipient is refused.
	chk, _ := f.NewCheck(ctx, &pipeline.Envelope{})
	env = &pipeline.Envelope{From: "ex@example.org"}
	if v, _ := chk.Rcpt(ctx, env, "bob@example.edu", ""); v.Action != verdict.Reject {
		t.Errorf("bob: %v", v)
	}
	if v, _ := chk.Rcpt(ctx, env, "alice@example.edu", ""); v.Final() {
		t.Errorf("alice: %v", v)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(string(etc.ExampleBlocklist))
	f.Add("a@b.c *.d\na@b.c @e\n")
	f.Add("a@b.c <x@y>\n\x00@\n")
	f.Fuzz(func(t *testing.T, in string) {
		b, err := Parse("f", strings.NewReader(in), "+")
		if err != nil {
			return
		}
		for rcpt := range b.rules {
			b.Blocks(rcpt, "x@example.org")
		}
	})
}

func FuzzFromAddresses(f *testing.F) {
	for _, s := range []string{`"A" <a@b.c>`, `g: a@b, c@d;`, `=?utf-8?b?w6k=?= <e@f>`, `(((`, `<@a:b@c>`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		for _, a := range FromAddresses(in) {
			if !strings.Contains(a, "@") {
				t.Fatalf("%q gave %q", in, a)
			}
		}
	})
}

// hostileMessage: 1,000 recipients who all keep lists, and six From:
// headers of 16 KB full of addresses.
func hostileMessage(b testing.TB) (*Filter, *pipeline.Envelope, []string) {
	var list strings.Builder
	env := &pipeline.Envelope{}
	for i := 0; i < 1000; i++ {
		rcpt := fmt.Sprintf("user%d@example.edu", i)
		env.Rcpts = append(env.Rcpts, rcpt)
		for j := 0; j < 10; j++ {
			fmt.Fprintf(&list, "%s sender%d@list%d.example.com\n", rcpt, j, i)
		}
		fmt.Fprintf(&list, "%s *.spam%d.example\n", rcpt, i)
	}
	bl, err := Parse("list", strings.NewReader(list.String()), "+")
	if err != nil {
		b.Fatal(err)
	}
	var from strings.Builder
	for from.Len() < 16<<10-40 {
		fmt.Fprintf(&from, "Some Name <someone%d@a.very.long.sub.domain.example.org>, ", from.Len())
	}
	headers := []string{from.String(), from.String(), from.String(), from.String(), from.String(), from.String()}
	return New(Options{List: bl}), env, headers
}

// The addresses taken from From: headers are bounded, whatever the
// headers hold.
func TestFromAddressesBounded(t *testing.T) {
	_, _, headers := hostileMessage(t)
	if n := len(FromAddresses(headers[0])); n > maxFromAddresses+1 || n < maxFromAddresses {
		t.Fatalf("%d addresses taken from a header of %d", n, strings.Count(headers[0], "@"))
	}
}

func BenchmarkEndOfHeadersHostile(b *testing.B) {
	f, env, headers := hostileMessage(b)
	for i := 0; i < b.N; i++ {
		chk, _ := f.NewCheck(ctx, env)
		for _, h := range headers {
			chk.Header(ctx, "From", h)
		}
		chk.EndOfHeaders(ctx, env)
	}
}
