package oneline

import (
	"strings"
	"testing"
)

func TestHeader(t *testing.T) {
	for _, c := range []struct {
		in   string
		max  int
		want string
	}{
		{"Clean", 0, "Clean"},
		{"a\r\nX-Injected: 1\x00", 0, "a  X-Injected: 1 "},
		{"tab\tstays, DEL\x7f goes", 0, "tab\tstays, DEL  goes"},
		{"caf\xc3\xa9 \xff", 0, "caf\xc3\xa9 \xff"},
		{strings.Repeat("v", 10), 4, "vvvv"},
		{"short", 10, "short"},
	} {
		if got := Header(c.in, c.max); got != c.want {
			t.Errorf("Header(%q, %d) = %q, want %q", c.in, c.max, got, c.want)
		}
	}
}

func TestASCII(t *testing.T) {
	for _, c := range []struct {
		in   string
		max  int
		repl byte
		want string
	}{
		{"VIRUS FOUND", 0, ' ', "VIRUS FOUND"},
		{"a\r\n250 ok\tcaf\xc3\xa9", 0, '?', "a??250 ok?caf??"},
		{strings.Repeat("x", 500), 400, ' ', strings.Repeat("x", 400)},
	} {
		if got := ASCII(c.in, c.max, c.repl); got != c.want {
			t.Errorf("ASCII(%q, %d) = %q, want %q", c.in, c.max, got, c.want)
		}
	}
}

func FuzzOneLine(f *testing.F) {
	f.Add("a\r\nb", 3)
	f.Add("caf\xc3\xa9\x00", 0)
	f.Fuzz(func(t *testing.T, s string, max int) {
		for _, out := range []string{Header(s, max), ASCII(s, max, '?')} {
			if strings.ContainsAny(out, "\r\n\x00") {
				t.Fatalf("%q kept a line break or NUL", out)
			}
			if max > 0 && len(out) > max || len(out) > len(s) {
				t.Fatalf("%q longer than %d", out, max)
			}
		}
		if a := ASCII(s, 0, '?'); strings.IndexFunc(a, func(r rune) bool { return r < 0x20 || r > 0x7e }) >= 0 {
			t.Fatalf("%q not printable ASCII", a)
		}
	})
}
