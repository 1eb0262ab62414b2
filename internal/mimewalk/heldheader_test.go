package mimewalk

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// fieldsUnderLimits is a message whose top header and each of two part
// headers hold 9,000 short fields of other names than the parser needs,
// under every header limit, and whose second part is named evil.exe.
func fieldsUnderLimits() string {
	junk := strings.Repeat("X-A: b\r\n", 9000)
	return "From: <a@example.org>\r\n" + junk + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n" +
		"--b\r\n" + junk + "Content-Type: text/plain\r\n\r\nhello\r\n" +
		"--b\r\nContent-Type: application/octet-stream\r\n" + junk + "Content-Disposition: attachment;\r\n filename=\"evil.exe\"\r\n\r\nMZ\r\n--b--\r\n"
}

// The parser holds a header section whole, field by field, at some 60
// times the size of short fields: what a message under the header limits
// costs. Only the fields the walk reads are given to it, so such a
// message costs about what a plain one does, and its parts are read as
// before.
func TestHeaderFieldsNotNeededAreNotHeld(t *testing.T) {
	msg := fieldsUnderLimits()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	parts, err := walk(t, msg, Options{})
	runtime.ReadMemStats(&after)
	if err != nil || len(parts) != 2 || parts[1].Name != "evil.exe" || parts[0].Type != "text/plain" {
		t.Fatalf("parts %+v, %v", parts, err)
	}
	grew := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d KiB allocated for a message of %d KiB", grew>>10, len(msg)>>10)
	if grew > 2<<20 {
		t.Errorf("allocated %d MiB for a %d KiB message of header fields the walk does not read", grew>>20, len(msg)>>10)
	}
}

// Many fields the walk does read, in one section, are past a limit: a
// name in the last of them must not go unseen.
func TestManyContentFieldsAreALimit(t *testing.T) {
	var b strings.Builder
	for i := 0; i < 200; i++ {
		fmt.Fprintf(&b, "Content-Disposition: attachment; filename=\"f%d.txt\"\r\n", i)
	}
	msg := top(`multipart/mixed; boundary="b"`, "--b\r\n"+b.String()+"Content-Disposition: attachment; filename=\"evil.exe\"\r\n\r\nMZ\r\n--b--\r\n")
	_, err := walk(t, msg, Options{})
	if le, ok := err.(*LimitError); !ok || le.Limit != "max_header" {
		t.Fatalf("got %v, want max_header", err)
	}
}
