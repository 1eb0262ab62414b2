package fileerr

import (
	"errors"
	"fmt"
	"testing"
)

func TestError(t *testing.T) {
	if got := At("a.toml", 3, "bad %s", "key").Error(); got != "a.toml:3: bad key" {
		t.Error(got)
	}
	if got := (&Error{File: "a.toml", Msg: "missing"}).Error(); got != "a.toml: missing" {
		t.Error(got)
	}
	var e *Error
	if err := fmt.Errorf("loading: %w", errors.Join(At("f", 1, "x"))); !errors.As(err, &e) || e.Line != 1 {
		t.Error("not found through wrapping")
	}
}
