package mimewalk

import (
	"errors"
	"runtime"
	"strings"
	"testing"
)

// headerBomb is a message of about size bytes whose one part header is
// "X-A: b" fields after a line the old guard did not take for a field.
func headerBomb(first string, size int) string {
	var b strings.Builder
	b.WriteString(top(`multipart/mixed; boundary="b"`, "--b\r\nContent-Type: text/plain\r\n"+first))
	for b.Len() < size {
		b.WriteString("X-A: b\r\n")
	}
	b.WriteString("\r\nbody\r\n--b--\r\n")
	return b.String()
}

// A part header is bounded however its lines look: a line without a
// name (":x") or with a blank before the colon ("X-A :b") does not end
// the count, because the parser does not stop there either.
func TestPartHeaderBoundWhateverItsLines(t *testing.T) {
	for _, first := range []string{"", ":x\r\n", "X-A :b\r\n", "no colon\r\n", " leading blank\r\n"} {
		msg := headerBomb(first, 9<<20)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := walk(t, msg, Options{})
		runtime.ReadMemStats(&after)
		grew := after.TotalAlloc - before.TotalAlloc
		t.Logf("%q: %d MiB allocated for a %d MiB message: %v", first, grew>>20, len(msg)>>20, err)
		var le *LimitError
		if !errors.As(err, &le) || le.Limit != "max_header" {
			t.Errorf("%q: got %v, want max_header", first, err)
		}
		if grew > 32<<20 {
			t.Errorf("%q: allocated %d MiB for a %d MiB message", first, grew>>20, len(msg)>>20)
		}
	}
}

// An attached message's header (message/rfc822) is bounded as the top
// one is: the part's content is no part header to the multipart around
// it, so only the attached message's own reader can count it.
func TestAttachedMessageHeaderBound(t *testing.T) {
	fields := strings.Repeat("X-Top: field\r\n", 20000)
	long := "X-Long: " + strings.Repeat("a", 2<<20) + "\r\n"
	for _, inner := range []string{fields, long} {
		for _, msg := range []string{
			top(`multipart/mixed; boundary="b"`, multipart("b", "Content-Type: message/rfc822\r\n\r\n"+inner+"\r\nbody\r\n")),
			top("message/rfc822", inner+"\r\nbody\r\n"),
		} {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, err := walk(t, msg, Options{})
			runtime.ReadMemStats(&after)
			var le *LimitError
			if !errors.As(err, &le) || le.Limit != "max_header" {
				t.Errorf("got %v, want max_header", err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
				t.Errorf("allocated %d MiB for a %d KiB message", grew>>20, len(msg)>>10)
			}
		}
	}
}

// BenchmarkPartHeaderBomb: the memory a 9 MiB part header of short
// fields costs, after a line of each form (go test -bench PartHeaderBomb
// -benchmem).
func BenchmarkPartHeaderBomb(b *testing.B) {
	for name, first := range map[string]string{"fields only": "", ":x": ":x\r\n", "X-A :b": "X-A :b\r\n"} {
		msg := headerBomb(first, 9<<20)
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Walk(strings.NewReader(msg), Options{}, func(*Part) error { return nil })
			}
		})
	}
}
