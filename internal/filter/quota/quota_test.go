package quota

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailguard/internal/maildir"
	"mailguard/internal/pipeline"
	"mailguard/internal/userdir"
	"mailguard/internal/verdict"
)

// box makes a Maildir whose maildirsize says what is given.
func box(t testing.TB, root, name, maildirsize string) string {
	dir := filepath.Join(root, name)
	for _, sub := range []string{"cur", "new", "tmp"} {
		os.MkdirAll(filepath.Join(dir, sub), 0o700)
	}
	if maildirsize != "" {
		if err := os.WriteFile(filepath.Join(dir, "maildirsize"), []byte(maildirsize), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func testFilter(t *testing.T) *Filter {
	root := t.TempDir()
	users := strings.Join([]string{
		"full@example.edu " + box(t, root, "full", "100000S\n90000 10\n"),
		"roomy@example.edu " + box(t, root, "roomy", "100000S\n10000 1\n"),
		"edge@example.edu " + box(t, root, "edge", "100000S\n74400 5\n"), // 25,600 left: exactly the margin
		"count@example.edu " + box(t, root, "count", "0S,10C\n10 10\n"),
		"unlimited@example.edu " + box(t, root, "unlimited", "0S\n999999999 100000\n"),
		"userquota@example.edu " + box(t, root, "userquota", "\n60000 3\n") + " quota=80000",
		"default@example.edu " + box(t, root, "default", "\n60000 3\n"),
		"forward@example.edu " + box(t, root, "forward", "1000S\n5000 5\n") + " forward",
		"autoreply@example.edu " + box(t, root, "autoreply", "1000S\n5000 5\n") + " autoreply",
		"nofile@example.edu " + box(t, root, "nofile", ""),
	}, "\n")
	dir, err := userdir.Parse("users", strings.NewReader(users), userdir.Options{Delimiter: "+"})
	if err != nil {
		t.Fatal(err)
	}
	return New(Options{Users: dir, Usage: &maildir.UsageReader{}, DefaultQuota: 70000, Margin: 25 << 10, Exempt: DefaultExempt})
}

func TestRule(t *testing.T) {
	f := testFilter(t)
	cases := []struct {
		rcpt   string
		size   int64
		refuse bool
	}{
		{"full@example.edu", 0, true},
		{"Full+lists@EXAMPLE.edu", 0, true},
		{"roomy@example.edu", 0, false},
		{"roomy@example.edu", 89000, false},
		{"roomy@example.edu", 91000, true}, // SIZE larger than the room left
		{"edge@example.edu", 0, false},     // exactly the margin left
		{"edge@example.edu", 25601, true},
		{"count@example.edu", 0, true}, // message count limit reached
		{"unlimited@example.edu", 1 << 40, false},
		{"userquota@example.edu", 0, true},  // quota= 80000, 60000 used: 20000 < margin
		{"default@example.edu", 0, true},    // default 70000: 10000 left
		{"forward@example.edu", 0, false},   // forwards: never refused
		{"autoreply@example.edu", 0, false}, // auto-replies: never refused
		{"nofile@example.edu", 0, false},    // empty Maildir, default quota: room
		{"stranger@example.edu", 0, false},  // not a local account
		{"../../etc/passwd@example.edu", 0, false},
		{"full@example.edu/../../x", 0, false},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/size=%d", c.rcpt, c.size), func(t *testing.T) {
			v := f.Decide(c.rcpt, c.size)
			if v.Final() != c.refuse {
				t.Fatalf("refused=%v (%s), want %v", v.Final(), v.Reason, c.refuse)
			}
			if c.refuse {
				if code, enh, text := v.Reply(); code != 552 || enh != "5.2.2" || text != "Mailbox full" {
					t.Errorf("reply %d %s %s", code, enh, text)
				}
			}
		})
	}
}

func TestExemptSenders(t *testing.T) {
	f := testFilter(t)
	cases := map[string]bool{
		"":                          true,
		"postmaster@elsewhere.org":  true,
		"PostMaster@Elsewhere.org":  true,
		"MAILER-DAEMON@mx.example":  true,
		"postmaster.not@x.org":      false,
		"someone@example.org":       false,
		"postmaster@x.org@evil.org": false,
	}
	for sender, want := range cases {
		chk, _ := f.NewCheck(context.Background(), &pipeline.Envelope{From: sender})
		v, _ := chk.Rcpt(context.Background(), nil, "full@example.edu", "")
		if refused := v.Final(); refused == want {
			t.Errorf("sender %q: refused=%v", sender, refused)
		}
	}
	custom := New(Options{Exempt: []string{"*@example.org", "boss@corp.example"}})
	if !custom.exempt.Match("Boss@Corp.example") || !custom.exempt.Match("a@example.org") || custom.exempt.Match("a@example.com") {
		t.Error("custom patterns")
	}
}

// One refused recipient leaves the others of the same message alone.
func TestPerRecipientThroughPipeline(t *testing.T) {
	f := testFilter(t)
	p := pipeline.New(pipeline.Env{Log: discard(), Now: nil}, pipeline.Member{Filter: f, OnError: pipeline.OnErrorAccept})
	m, _ := p.Begin(&pipeline.Conn{Addr: "192.0.2.1"}, pipeline.AllStages, "a@example.org", "SIZE=1000")
	if v := m.Rcpt("full@example.edu", ""); v.Action != verdict.Reject {
		t.Fatalf("full: %v", v)
	}
	if v := m.Rcpt("roomy@example.edu", ""); v.Final() {
		t.Fatalf("roomy: %v", v)
	}
	if v := m.End(); v.Final() {
		t.Fatalf("message: %v", v)
	}
	m.Close()
	if r := m.Envelope().Rcpts; len(r) != 1 || r[0] != "roomy@example.edu" {
		t.Fatalf("recipients %v", r)
	}
}

// BenchmarkRcpt is the cost of one RCPT check with 50,000 accounts in the
// directory, their maildirsize files unchanged since the last check (the
// common case: one stat, no read).
func BenchmarkRcpt(b *testing.B) {
	root := b.TempDir()
	var users strings.Builder
	const n = 50000
	for i := 0; i < n; i++ {
		dir := filepath.Join(root, fmt.Sprintf("u%d", i))
		if i < 1000 { // a thousand real Maildirs to cycle through
			box(b, root, fmt.Sprintf("u%d", i), fmt.Sprintf("26214400S,1000C\n%d 5\n", i*1000))
		}
		fmt.Fprintf(&users, "user%d@example.edu %s quota=25M\n", i, dir)
	}
	dir, err := userdir.Parse("users", strings.NewReader(users.String()), userdir.Options{Delimiter: "+"})
	if err != nil {
		b.Fatal(err)
	}
	f := New(Options{Users: dir, Usage: &maildir.UsageReader{}, Margin: 25 << 10, Exempt: DefaultExempt})
	rcpts := make([]string, 1000)
	for i := range rcpts {
		rcpts[i] = fmt.Sprintf("user%d@example.edu", i)
		f.Decide(rcpts[i], 0) // warm the cache
	}
	b.ResetTimer()
	i := 0
	for b.Loop() {
		f.Decide(rcpts[i%len(rcpts)], 5000)
		i++
	}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
