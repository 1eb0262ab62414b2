package userdir

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"mailguard/etc"
)

var opts = Options{Delimiter: "+"}

func TestExampleFile(t *testing.T) {
	d, err := Parse("users.example", bytes.NewReader(etc.ExampleUsers), opts)
	if err != nil {
		t.Fatal(err)
	}
	u, ok := d.Lookup("Alice+lists@Example.EDU")
	if !ok || u.Maildir != "/var/mail/example.edu/alice/Maildir" || u.Quota != 25<<20 || u.Count != 10000 {
		t.Fatalf("alice: %+v %v", u, ok)
	}
	if u, _ := d.Lookup("carol@example.edu"); !u.Forward {
		t.Error("carol not forward")
	}
	if u, _ := d.Lookup("dave@example.edu"); !u.Autoreply {
		t.Error("dave not autoreply")
	}
	if d.Len() != 4 {
		t.Errorf("%d users", d.Len())
	}
}

func TestLookup(t *testing.T) {
	d, err := Parse("u", strings.NewReader("alice@example.edu /m/alice\nBob@Example.edu /m/bob\n"), opts)
	if err != nil {
		t.Fatal(err)
	}
	found := []string{"alice@example.edu", "<alice@example.edu>", "ALICE@EXAMPLE.EDU", "alice+x@example.edu", "alice+@example.edu", "bob@example.edu"}
	for _, a := range found {
		if _, ok := d.Lookup(a); !ok {
			t.Errorf("%q not found", a)
		}
	}
	hostile := []string{
		"../../etc/passwd@example.edu", "alice@../../etc", "alice@example.edu/../x", "alice\x00@example.edu",
		"alice@example.edu\n", "alice @example.edu", "@example.edu", "alice@", "alice", "",
		strings.Repeat("a", 10000) + "@example.edu", "+alice@example.edu", "alice@exa\\mple.edu",
	}
	for _, a := range hostile {
		if u, ok := d.Lookup(a); ok {
			t.Errorf("%q found %+v", a, u)
		}
	}

	cs, _ := Parse("u", strings.NewReader("alice@example.edu /m/alice\n"), Options{CaseSensitiveLocal: true})
	if _, ok := cs.Lookup("Alice@EXAMPLE.edu"); ok {
		t.Error("case-sensitive local part matched another case")
	}
	if _, ok := cs.Lookup("alice@EXAMPLE.edu"); !ok {
		t.Error("domain compared case-sensitively")
	}
	if _, ok := cs.Lookup("alice+x@example.edu"); ok {
		t.Error("detail address found with no delimiter configured")
	}
}

func TestParseErrors(t *testing.T) {
	in := "alice@example.edu\n" + // 1: no maildir
		"bob@example.edu relative/path\n" + // 2
		"carol@example.edu /m/c quota=lots\n" + // 3
		"dave@example.edu /m/d colour=red\n" + // 4
		"not-an-address /m/e\n" + // 5
		"frank@example.edu /m/f count=-1\n" + // 6
		"grace@example.edu /m/g\nGRACE@example.edu /m/g2\n" + // 7, 8
		"henry@example.edu /m/h quota=1G quota=2G\n" + // 9
		"ivy@example.edu /m/i count=abc\n" // 10
	_, err := Parse("users", strings.NewReader(in), opts)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"users:1:", "users:2: maildir", "users:3: quota=lots", "users:4: unknown option", "users:5:", "users:6: count=-1", "users:8: GRACE@example.edu is listed twice (first at line 7)",
		"users:9: option quota given twice", `users:10: count=abc: "abc" is not a number of messages`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	cases := map[string]int64{"0": 0, "1048576": 1 << 20, "500K": 500 << 10, "25M": 25 << 20, "1G": 1 << 30, "2t": 2 << 40}
	for in, want := range cases {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("%q = %d %v, want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "M", "-1K", "1.5M", "99999999999999999999", "8000000000T"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(string(etc.ExampleUsers))
	f.Add("a@b /x quota=1K count=2 forward autoreply # c\n")
	f.Add("a@b\x00 /x\n@ /\n")
	f.Fuzz(func(t *testing.T, in string) {
		d, err := Parse("f", strings.NewReader(in), opts)
		if err != nil {
			return
		}
		for _, u := range d.users {
			if !strings.HasPrefix(u.Maildir, "/") || u.Quota < 0 || u.Count < 0 {
				t.Fatalf("bad account accepted: %+v", u)
			}
			if got, ok := d.Lookup(u.Address); !ok || got != u {
				t.Fatalf("%q not found by its own address", u.Address)
			}
		}
	})
}

// FuzzParseSize: a size (quota= in the users file, every size in the
// configuration) is never negative nor past 2^62, and the value it gives,
// written back in bytes or in its unit, reads as itself.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "1048576", "500K", "25M", "1g", "2T", " 7 ", "-1K", "1.5M", "99999999999999999999", "4194304T", "+5M", "0x10", "M"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			if n != 0 {
				t.Fatalf("%q: %d with an error", s, n)
			}
			return
		}
		if n < 0 || n > 1<<62 {
			t.Fatalf("%q: %d", s, n)
		}
		if back, err := ParseSize(strconv.FormatInt(n, 10)); err != nil || back != n {
			t.Fatalf("%q = %d, written back reads %d %v", s, n, back, err)
		}
		for _, u := range []struct {
			suffix string
			mult   int64
		}{{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}} {
			if n%u.mult == 0 {
				if back, err := ParseSize(strconv.FormatInt(n/u.mult, 10) + u.suffix); err != nil || back != n {
					t.Fatalf("%q = %d, written in %s reads %d %v", s, n, u.suffix, back, err)
				}
			}
		}
	})
}
