package linefile

import (
	"errors"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	var got []string
	err := Read("f", strings.NewReader("a b # comment\n\n  # only a comment\nbad\nc\td\n"+strings.Repeat("x", MaxLine+1)+"\n"), func(line int, fields []string) error {
		if fields[0] == "bad" {
			return errors.New("bad line")
		}
		got = append(got, strings.Join(fields, "+"))
		return nil
	})
	if strings.Join(got, ",") != "a+b,c+d" {
		t.Errorf("fields %q", got)
	}
	var le *Error
	if err == nil || !errors.As(err, &le) || !strings.Contains(err.Error(), "f:4: bad line") || !strings.Contains(err.Error(), "f:6: line longer") {
		t.Errorf("errors: %v", err)
	}
}
