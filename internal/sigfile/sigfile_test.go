package sigfile

import (
	"strings"
	"testing"
)

const sobig = "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3"

func TestParseForms(t *testing.T) {
	in := "# worms of the week\n\nWORM_SOBIG.B =\n" + sobig + "\n" +
		"  WORM_KLEZ.H = TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAA  \r\n" +
		"BIN = hex:00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f\n" +
		"PADDED =\nQUJDREVGR0hJSktMTU5PUA==\n"
	sigs, err := Parse("sigs", strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name, pattern string
		line          int
	}{
		{"WORM_SOBIG.B", sobig, 3},
		{"WORM_KLEZ.H", "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAA", 5},
		{"BIN", "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f", 6},
		{"PADDED", "QUJDREVGR0hJSktMTU5PUA==", 7},
	}
	if len(sigs) != len(want) {
		t.Fatalf("got %d signatures, want %d: %+v", len(sigs), len(want), sigs)
	}
	for i, w := range want {
		if sigs[i].Name != w.name || string(sigs[i].Pattern) != w.pattern || sigs[i].Line != w.line {
			t.Errorf("sig %d = %q %q line %d, want %q %q line %d", i, sigs[i].Name, sigs[i].Pattern, sigs[i].Line, w.name, w.pattern, w.line)
		}
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		{"pattern with no name", sobig + "\n", "f:1: pattern with no name"},
		{"name at end of file", "A =\n", "f:1: signature A has no pattern: the file ends"},
		{"name then blank", "A =\n\n" + sobig + "\n", "f:1: signature A has no pattern"},
		{"name then name", "A =\nB = " + sobig + "\n", "f:1: signature A has no pattern: line 2 starts the next signature"},
		{"empty hex", "A = hex:\n", "f:1: signature A: empty hex pattern"},
		{"bad hex", "A = hex:0g0102030405060708090a0b0c0d0e0f\n", "f:1: signature A: bad hex pattern"},
		{"odd hex", "A = hex:0102030405060708090a0b0c0d0e0f1\n", "f:1: signature A: bad hex pattern"},
		{"too short", "A = abcdefghijklmno\n", "f:1: signature A: pattern is 15 bytes, the minimum is 16"},
		{"too long", "A = " + strings.Repeat("x", 1001) + "\n", "the maximum is 1000"},
		{"duplicate name", "A = " + sobig + "\nA = " + sobig + "x\n", "f:2: signature A is defined twice (first at line 1)"},
		{"duplicate pattern", "A = " + sobig + "\nB = " + sobig + "\n", "f:2: signature B has the same pattern as A"},
		{"bad name", "A$B = " + sobig + "\n", `f:1: signature name "A$B"`},
		{"NUL byte", "A = abc\x00defghijklmnopqrst\n", "f:1: NUL byte"},
		{"huge line", strings.Repeat("y", 70000) + "\n", "longer than 65536 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("f", strings.NewReader(c.in))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestParseReportsEveryError(t *testing.T) {
	_, err := Parse("f", strings.NewReader("A = short\nB = hex:zz\n"+sobig+"\n"))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"f:1:", "f:2:", "f:3:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("A =\n" + sobig + "\n# c\nB = hex:000102030405060708090a0b0c0d0e0f\n")
	f.Add("A =\n\nB =\n")
	f.Add("=\n = x\nA = hex:\x00\n")
	f.Fuzz(func(t *testing.T, in string) {
		sigs, err := Parse("f", strings.NewReader(in))
		if err != nil {
			if sigs != nil {
				t.Fatal("signatures returned with an error")
			}
			return
		}
		seen := map[string]bool{}
		for _, s := range sigs {
			if len(s.Pattern) < 16 || len(s.Pattern) > 1000 || seen[s.Name] || s.Line < 1 {
				t.Fatalf("bad signature accepted: %+v", s)
			}
			seen[s.Name] = true
		}
	})
}

// FuzzFormatPattern: any pattern of a length a signature may have,
// written by FormatPattern (as sigmine prints what it found), reads back
// as itself, on its own line or after its name; and a pattern of
// printable text stays text.
func FuzzFormatPattern(f *testing.F) {
	for _, s := range []string{sobig, "A = " + sobig, "# not a comment, a pattern!", "hex:00112233445566778899", " padded pattern  here ",
		"with\x00NUL and \r\n line ends", "\xff\xfe non-UTF-8 bytes here", "caf\u00e9 \u00a0no-break spaces\u00a0"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		if len(p) < 16 || len(p) > 1000 {
			return
		}
		text := FormatPattern(p)
		for _, file := range []string{"N =\n" + text + "\n", "N = " + text + "\n"} {
			sigs, err := Parse("f", strings.NewReader(file))
			if err != nil || len(sigs) != 1 || string(sigs[0].Pattern) != string(p) {
				t.Fatalf("%q written as %q reads back as %+v, %v", p, text, sigs, err)
			}
		}
		if strings.HasPrefix(text, "hex:") && !strings.HasPrefix(string(p), "hex:") && strings.Trim(string(p), " ") == string(p) &&
			!strings.HasPrefix(string(p), "#") && !strings.Contains(string(p), "=") && strings.IndexFunc(string(p), func(r rune) bool { return r < ' ' || r > '~' }) < 0 {
			t.Fatalf("printable %q written as hex", p)
		}
	})
}
