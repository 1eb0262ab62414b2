package quota

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"mailguard/internal/dovecotauth"
	"mailguard/internal/maildir"
	"mailguard/internal/pipeline"
	"mailguard/internal/testserver"
)

func TestParseQuotaRule(t *testing.T) {
	for rule, want := range map[string][2]int64{
		"*:storage=1M":                {1 << 20, 0},
		"*:storage=100":               {100 << 10, 0}, // kilobytes
		"*:storage=10MB:messages=500": {10 << 20, 500},
		"*:bytes=1000":                {1000, 0},
		"*:bytes=2k":                  {2048, 0},
		"*:storage=1G":                {1 << 30, 0},
		"*:storage=+10M":              {0, 0},
		"*:storage=10%":               {0, 0},
		"Trash:storage=1M":            {0, 0},
		"*:ignore":                    {0, 0},
		"":                            {0, 0},
		"*:storage=0":                 {0, 0},
		"*:messages=x":                {0, 0},
	} {
		b, m := parseQuotaRule(rule)
		if b != want[0] || m != want[1] {
			t.Errorf("%q: %d bytes %d messages, want %v", rule, b, m, want)
		}
	}
}

type manualClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *manualClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *manualClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func userdbPasswd(root, aliceRule string) string {
	return fmt.Sprintf(`alice@example.edu:{PLAIN}x:65534:65534::%[1]s/alice::userdb_quota_rule=%[2]s
bob@example.edu:{PLAIN}x:65534:65534::%[1]s/bob::userdb_mail=maildir:~/Mail:LAYOUT=fs userdb_quota_rule=*:storage=1M userdb_forward
carol@example.edu:{PLAIN}x:65534:65534::%[1]s/carol::userdb_mail=mdbox:~/mdbox
dave@example.edu:{PLAIN}x:65534:65534::%[1]s/dave::userdb_vacation=no userdb_quota_rule=*:messages=2
`, root, aliceRule)
}

// A Dovecot userdb with quota_rule extra fields: limits, Maildirs,
// forwarding, unknown users, a change seen after the cache time, and a
// failed lookup left to on_error.
func TestUserdbFromRealDovecot(t *testing.T) {
	root := t.TempDir()
	box(t, root, "alice/Maildir", "0S\n90000 10\n")
	box(t, root, "bob/Mail", "0S\n2000000 10\n")
	box(t, root, "dave/Maildir", "0S\n100 2\n")
	d := testserver.StartDovecotAuth(t, userdbPasswd(root, "*:storage=100K"))
	clk := &manualClock{t: time.Unix(1_700_000_000, 0)}
	udb := &Userdb{Client: &dovecotauth.Client{Path: d.Socket}, Cache: time.Minute, Maildir: "~/Maildir",
		ForwardFields: []string{"forward"}, AutoreplyFields: []string{"vacation"}, Delimiter: "+", Now: clk.now}
	f := New(Options{Userdb: udb, Usage: &maildir.UsageReader{}, Margin: 25 << 10})
	rcpt := func(addr string) string {
		t.Helper()
		c, _ := f.NewCheck(t.Context(), &pipeline.Envelope{From: "someone@example.org"})
		v, err := c.Rcpt(t.Context(), nil, addr, "")
		if err != nil {
			return "error: " + err.Error()
		}
		return v.String()
	}
	if got := rcpt("<Alice+lists@Example.EDU>"); !strings.Contains(got, "552 5.2.2") {
		t.Fatalf("alice at 90000 of 100K: %s", got)
	}
	if u, _, _ := udb.Lookup(t.Context(), "alice@example.edu"); u.Maildir != filepath.Join(root, "alice/Maildir") || u.Quota != 100<<10 {
		t.Fatalf("alice: %+v", u)
	}
	if u, _, _ := udb.Lookup(t.Context(), "bob@example.edu"); u == nil || u.Maildir != filepath.Join(root, "bob/Mail") || !u.Forward {
		t.Fatalf("bob: %+v", u)
	}
	if u, ok, err := udb.Lookup(t.Context(), "carol@example.edu"); ok || err != nil {
		t.Errorf("carol's mdbox taken for a Maildir: %+v %v", u, err)
	}
	for addr, why := range map[string]string{
		"bob@example.edu":     "forwards",
		"carol@example.edu":   "no Maildir",
		"nobody@example.edu":  "unknown",
		"bad\taddr@x.example": "not an address",
	} {
		if got := rcpt(addr); strings.Contains(got, "552") || strings.Contains(got, "error") {
			t.Errorf("%s (%s): %s", addr, why, got)
		}
	}
	if got := rcpt("dave@example.edu"); !strings.Contains(got, "552") {
		t.Errorf("dave at 2 of 2 messages (vacation=no): %s", got)
	}

	// The administrator raises alice's quota: the cached answer holds
	// until the cache time has passed, then the new rule applies.
	d.SetPasswd(userdbPasswd(root, "*:storage=10M"))
	direct := &dovecotauth.Client{Path: d.Socket}
	for i := 0; ; i++ { // Dovecot rereads its passwd-file within a second
		rep, err := direct.Lookup(t.Context(), "alice@example.edu")
		if err == nil && rep.Fields["quota_rule"] == "*:storage=10M" {
			break
		}
		if i == 100 {
			t.Fatalf("Dovecot did not reread its passwd-file: %+v %v", rep, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	direct.Close()
	if got := rcpt("alice@example.edu"); !strings.Contains(got, "552") {
		t.Fatalf("within the cache time: %s", got)
	}
	clk.add(61 * time.Second)
	if got := rcpt("alice@example.edu"); strings.Contains(got, "552") {
		t.Fatalf("after the cache time: %s", got)
	}

	// Dovecot gone: the lookup fails (the pipeline applies on_error);
	// cached answers still serve until they expire.
	d.Stop()
	if got := rcpt("alice@example.edu"); strings.Contains(got, "error") {
		t.Fatalf("a cached answer failed: %s", got)
	}
	clk.add(61 * time.Second)
	if got := rcpt("alice@example.edu"); !strings.Contains(got, "error") {
		t.Fatalf("Dovecot stopped: %s", got)
	}
}

// BenchmarkUserdbRcpt is one RCPT for a userdb user: from the cache, and
// with a lookup in a real Dovecot each time; interleaved in one run.
func BenchmarkUserdbRcpt(b *testing.B) {
	root := b.TempDir()
	var passwd string
	for i := 0; i < 1000; i++ {
		dir := filepath.Join(root, fmt.Sprintf("u%d", i))
		os.MkdirAll(filepath.Join(dir, "Maildir"), 0o700)
		os.WriteFile(filepath.Join(dir, "Maildir", "maildirsize"), []byte("0S\n1000 1\n"), 0o600)
		passwd += fmt.Sprintf("u%d@example.edu:{PLAIN}x:65534:65534::%s::userdb_quota_rule=*:storage=1M\n", i, dir)
	}
	d := testserver.StartDovecotAuth(b, passwd)
	for _, cache := range []time.Duration{time.Hour, time.Nanosecond} {
		name := map[time.Duration]string{time.Hour: "cached", time.Nanosecond: "uncached"}[cache]
		udb := &Userdb{Client: &dovecotauth.Client{Path: d.Socket}, Cache: cache, Maildir: "~/Maildir"}
		f := New(Options{Userdb: udb, Usage: &maildir.UsageReader{}})
		c, _ := f.NewCheck(context.Background(), &pipeline.Envelope{From: "x@example.org"})
		b.Run("lookup/"+name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, _, err := udb.Lookup(context.Background(), fmt.Sprintf("u%d@example.edu", i%1000)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("rcpt/"+name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := c.Rcpt(context.Background(), nil, fmt.Sprintf("u%d@example.edu", i%1000), ""); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
