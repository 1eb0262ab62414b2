package mailfrom

import (
	"math"
	"testing"
)

func TestDeclaredSize(t *testing.T) {
	cases := []struct {
		args string
		size int64
		ok   bool
	}{
		{"SIZE=12345", 12345, true},
		{"BODY=8BITMIME size=77 SMTPUTF8", 77, true},
		{"SIZE=0", 0, true},
		{"SIZE=5 SIZE=9", 5, true}, // the first
		{"SIZE=99999999999999999999", math.MaxInt64, true},
		{"SIZE=9223372036854775807", math.MaxInt64, true},
		{"SIZE=9223372036854775808", math.MaxInt64, true},
		{"SIZE=123456789012345678901", 0, false}, // 21 digits
		{"SIZE=-5", 0, false},
		{"SIZE=+5", 0, false},
		{"SIZE=", 0, false},
		{"SIZE=12k", 0, false},
		{"SIZE=0x10", 0, false},
		{"XSIZE=5", 0, false},
		{"SIZE", 0, false},
		{"", 0, false},
	}
	for _, c := range cases {
		if size, ok := DeclaredSize(c.args); size != c.size || ok != c.ok {
			t.Errorf("%q: %d %v, want %d %v", c.args, size, ok, c.size, c.ok)
		}
	}
}

func FuzzDeclaredSize(f *testing.F) {
	for _, s := range []string{"SIZE=1", "size=99999999999999999999 BODY=7BIT", "SIZE=-1", "SIZE=\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, args string) {
		if size, ok := DeclaredSize(args); size < 0 || !ok && size != 0 {
			t.Fatalf("%q: %d %v", args, size, ok)
		}
	})
}
