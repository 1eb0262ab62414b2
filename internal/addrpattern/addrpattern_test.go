package addrpattern

import (
	"strings"
	"testing"
)

func TestPatterns(t *testing.T) {
	s, err := NewSet([]string{"Alice@Example.edu", "@lists.example.org", "*@spam.example", "*.bulk.example", "postmaster@*", "<>"})
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]bool{
		"alice@example.edu":        true,
		"<ALICE@example.EDU>":      true,
		"bob@example.edu":          false,
		"x@lists.example.org":      true,
		"x@sub.lists.example.org":  false,
		"x@spam.example":           true,
		"x@a.bulk.example":         true,
		"x@bulk.example":           false,
		"Postmaster@anywhere.test": true,
		"":                         true,
		"<>":                       true,
		"not-an-address":           false,
	}
	for addr, want := range cases {
		if got := s.Match(addr); got != want {
			t.Errorf("%q: %v, want %v", addr, got, want)
		}
	}
	// A bad pattern is named, and the good ones still hold.
	s, err = NewSet([]string{"a@example.org", "not a pattern", "b@example.org"})
	if err == nil || !strings.Contains(err.Error(), `"not a pattern"`) || !s.Match("b@example.org") {
		t.Fatalf("NewSet with a bad pattern: %v, b matched %v", err, s.Match("b@example.org"))
	}
	for _, bad := range []string{"", "*", "@", "*@*", "a@", "@a b", "x y@example.org", "*.", "a@b@*x"} {
		if Check(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzPattern(f *testing.F) {
	for _, s := range []string{"a@b.c", "@d", "*@d", "*.d", "l@*", "<>", "../../etc/passwd@x"} {
		f.Add(s, "x@d")
	}
	f.Fuzz(func(t *testing.T, p, addr string) {
		s := &Set{}
		if s.Add(p) == nil {
			s.Match(addr)
		}
	})
}
