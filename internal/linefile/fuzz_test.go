package linefile

import (
	"bufio"
	"errors"
	"fmt"
	"strings"
	"testing"

	"mailguard/internal/safefile"
)

// FuzzRead: whatever the file (the users file, a sender list), no panic;
// fn sees each line with fields once, in order, with no blank or
// comment in them; each error it returns is reported at its line.
func FuzzRead(f *testing.F) {
	for _, s := range []string{"alice@example.edu /var/mail/alice 25M\n# comment\n\nbob@x /m/b # trailing\n",
		"\ufeffa b\n", strings.Repeat("bad\n", 25), "a\r\nb\r\n", "bad\n\tbad too\n", strings.Repeat("x", MaxLine+1) + "\nafter\n", "#\n#\n", "a#b c\n", "\x00 \v\f\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var lines []int
		bad := 0
		err := Read("list", strings.NewReader(in), func(line int, fields []string) error {
			if len(lines) > 0 && line <= lines[len(lines)-1] {
				t.Fatalf("line %d after line %d", line, lines[len(lines)-1])
			}
			lines = append(lines, line)
			if len(fields) == 0 {
				t.Fatalf("line %d: no fields", line)
			}
			for _, fl := range fields {
				if fl == "" || strings.ContainsAny(fl, "# \t\n") {
					t.Fatalf("line %d: field %q", line, fl)
				}
			}
			if fields[0] == "bad" {
				bad++
				return errors.New("bad line")
			}
			return nil
		})
		// The lines with fields, read here: what fn must have seen.
		want := 0
		sc := bufio.NewScanner(strings.NewReader(in))
		sc.Buffer(nil, MaxLine)
		for sc.Scan() {
			text, _, _ := strings.Cut(sc.Text(), "#")
			if len(strings.Fields(text)) > 0 {
				want++
			}
		}
		if err == nil && (bad > 0 || len(lines) != want) {
			t.Fatalf("no error, %d bad lines, %d lines seen of %d", bad, len(lines), want)
		}
		if err != nil {
			var le *Error
			if !errors.As(err, &le) && !strings.HasPrefix(err.Error(), "list") {
				t.Fatalf("error without its file: %v", err)
			}
			// each bad line reported, up to MaxProblems, the rest counted
			total := bad
			if errors.Is(sc.Err(), bufio.ErrTooLong) {
				total++
			}
			if strings.Count(err.Error(), "bad line") != min(bad, safefile.MaxProblems) {
				t.Fatalf("%d bad lines, reported: %v", bad, err)
			}
			if more := total - safefile.MaxProblems; more > 0 && !strings.Contains(err.Error(), fmt.Sprintf("and %d more problems", more)) {
				t.Fatalf("%d problems, reported: %v", total, err)
			}
		}
	})
}
