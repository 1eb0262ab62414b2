package dovecotauth

import (
	"bufio"
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailguard/internal/testserver"
)

func TestRealDovecot(t *testing.T) {
	d := testserver.StartDovecotAuth(t, "alice@example.edu:{PLAIN}pw:65534:65534::/var/mail/alice::userdb_quota_rule=*:storage=1M userdb_mail=maildir:~/Maildir userdb_forward=bob@example.org\n")
	c := &Client{Path: d.Socket}
	defer c.Close()
	for i := 0; i < 3; i++ { // the connection is kept and reused
		rep, err := c.Lookup(t.Context(), "alice@example.edu")
		if err != nil {
			t.Fatal(err)
		}
		if !rep.Found || rep.User != "alice@example.edu" || rep.Fields["home"] != "/var/mail/alice" ||
			rep.Fields["quota_rule"] != "*:storage=1M" || rep.Fields["mail"] != "maildir:~/Maildir" || rep.Fields["forward"] != "bob@example.org" {
			t.Fatalf("%+v", rep)
		}
	}
	if len(c.idle) != 1 {
		t.Errorf("%d idle connections", len(c.idle))
	}
	// Unused connections are let go.
	idler := &Client{Path: d.Socket, IdleTime: 100 * time.Millisecond}
	if _, err := idler.Lookup(t.Context(), "alice@example.edu"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		idler.mu.Lock()
		left := len(idler.idle)
		idler.mu.Unlock()
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d idle connections kept 10 s past IdleTime", left)
		}
	}
	rep, err := c.Lookup(t.Context(), "nobody@example.edu")
	if err != nil || rep.Found {
		t.Fatalf("unknown user: %+v %v", rep, err)
	}
	for _, odd := range []string{"a\tb", "a\nUSER\t9\tx", "a\x00b", ""} {
		if rep, err := c.Lookup(t.Context(), odd); err != nil || rep.Found {
			t.Errorf("%q: %+v %v", odd, rep, err)
		}
	}
	// Dovecot stopped: once its auth process has gone too, lookups
	// fail (the kept connection is dead, and so is the socket).
	d.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := c.Lookup(t.Context(), "alice@example.edu")
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lookups still answered 10 s after Dovecot stopped")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fake is a server that answers each request with the given lines.
func fake(t *testing.T, answer func(id string) string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "auth-userdb")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte("VERSION\t1\t2\nSPID\t42\n"))
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					f := strings.Split(sc.Text(), "\t")
					if f[0] == "USER" {
						if a := answer(f[1]); a != "" {
							c.Write([]byte(a))
						}
					}
				}
			}()
		}
	}()
	return path
}

func TestFailuresAndTimeouts(t *testing.T) {
	cases := []struct {
		name   string
		answer func(id string) string
		want   string
	}{
		{"FAIL", func(id string) string { return "FAIL\t" + id + "\treason=ldap down\n" }, "lookup failed: ldap down"},
		{"silent", func(string) string { return "" }, "deadline exceeded"},
		{"wrong id", func(string) string { return "USER\t999\tx\n" }, "unexpected reply"},
		{"client socket", func(string) string { return "MECH\tPLAIN\n" }, "auth client socket"},
		{"huge line", func(id string) string { return "USER\t" + id + "\tx\tf=" + strings.Repeat("a", 100<<10) + "\n" }, "longer than"},
		{"garbage", func(id string) string { return "WHAT\t" + id + "\n" }, "unknown reply"},
	}
	for _, c := range cases {
		cl := &Client{Path: fake(t, c.answer), Timeout: 300 * time.Millisecond}
		_, err := cl.Lookup(t.Context(), "alice")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	// A cancelled call returns at once.
	cl := &Client{Path: fake(t, func(string) string { return "" }), Timeout: time.Minute}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := cl.Lookup(ctx, "alice"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled: %v", err)
	}
	// No socket at all.
	if _, err := (&Client{Path: filepath.Join(t.TempDir(), "none")}).Lookup(t.Context(), "a"); err == nil {
		t.Error("no error without a socket")
	}
}

func TestUnescape(t *testing.T) {
	if got := Unescape("a\x01tb\x01nc\x01rd\x011e\x010f\x01"); got != "a\tb\nc\rd\x01e\x00f\x01" {
		t.Fatalf("%q", got)
	}
}

func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"USER\t1\talice\thome=/h\tquota_rule=*:storage=1M", "NOTFOUND\t1", "FAIL\t1\treason=x",
		"VERSION\t1\t2", "SPID\t9", "USER\t1\t", "USER\t1\ta\t\x01", "CUID\t1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		rep, _, err := ParseReply(line, "1")
		if err == nil && rep.Found && rep.User == "" {
			t.Fatalf("found a user without a name: %q", line)
		}
	})
}
