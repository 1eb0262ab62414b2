package attachments_test

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"mailguard/internal/verdict"
)

// zipTweaked is a zip of names (each holding document), its end record
// then changed by tweak.
func zipTweaked(t *testing.T, tweak func([]byte) []byte, names ...string) []byte {
	var b bytes.Buffer
	zw := zip.NewWriter(&b)
	for _, n := range names {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: n, Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(document[:40])
	}
	zw.Close()
	if tweak == nil {
		return b.Bytes()
	}
	return tweak(b.Bytes())
}

// claims makes the end record claim n entries.
func claims(n uint16) func([]byte) []byte {
	return func(z []byte) []byte {
		end := len(z) - 22
		binary.LittleEndian.PutUint16(z[end+8:], n)
		binary.LittleEndian.PutUint16(z[end+10:], n)
		return z
	}
}

// zip64Claims puts a zip64 end record claiming n entries before the end
// record, whose own fields then say "see zip64".
func zip64Claims(n uint64) func([]byte) []byte {
	return func(z []byte) []byte {
		end := len(z) - 22
		rec := make([]byte, 56)
		copy(rec, "PK\x06\x06")
		binary.LittleEndian.PutUint64(rec[4:], 44)
		binary.LittleEndian.PutUint64(rec[24:], n)
		binary.LittleEndian.PutUint64(rec[32:], n)
		binary.LittleEndian.PutUint64(rec[40:], uint64(binary.LittleEndian.Uint32(z[end+12:])))
		binary.LittleEndian.PutUint64(rec[48:], uint64(binary.LittleEndian.Uint32(z[end+16:])))
		loc := make([]byte, 20)
		copy(loc, "PK\x06\x07")
		binary.LittleEndian.PutUint64(loc[8:], uint64(end))
		binary.LittleEndian.PutUint32(loc[16:], 1)
		classic := append([]byte(nil), z[end:]...)
		copy(classic[8:20], bytes.Repeat([]byte{0xff}, 12))
		return append(append(append(z[:end:end], rec...), loc...), classic...)
	}
}

// twoParts is a message whose first attachment is first (a whole part,
// header and content) and whose second is a program named evil.exe.
func twoParts(first string) string {
	return "From: a@example.org\r\nTo: b@example.com\r\nSubject: files\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"=_b\"\r\n\r\n" +
		"--=_b\r\n" + first +
		"--=_b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"evil.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(program) +
		"--=_b--\r\n"
}

// junk puts text at the given line of a base64 body (0: before the
// first), or into it at a column.
func junk(body string, line, col int, text string) string {
	lines := strings.SplitAfter(body, "\r\n")
	if col < 0 {
		return strings.Join(lines[:line], "") + text + strings.Join(lines[line:], "")
	}
	lines[line] = lines[line][:col] + text + lines[line][col:]
	return strings.Join(lines, "")
}

// Tricks a mail client still opens: each passed the filter once.
func TestTricksClientsOpen(t *testing.T) {
	sum := sha256.Sum256(program)
	p, counter := build(t, `hashes = ["bad.hsb"]
block_names = ["*.exe"]
block_disguised_executables = true
`, map[string]string{"bad.hsb": fmt.Sprintf("%x:%d:Feed.Bad.Program\n", sum, len(program))})
	octet := "application/octet-stream"
	prog := b64(program)
	many := make([]string, 20000)
	for i := range many {
		many[i] = fmt.Sprintf("file-%05d.txt", i)
	}
	many[len(many)-1] = "evil.exe"
	cases := []struct {
		name, msg, key string
	}{
		{"a malformed part header before the .exe part", twoParts("Content-Type: text/plain\r\nthis line has no colon\r\n\r\nhello\r\n"), "blocked hash"},
		{"a part header with a blank before a colon before the .exe part", twoParts("Content-Type: text/plain\r\nX-A :b\r\n:x\r\n\r\nhello\r\n"), "blocked hash"},
		{"a duplicate filename", mail(`filename="invoice.txt"; filename="evil.exe"`, octet, "base64", b64(document)), "name matches *.exe"},
		{"an invalid parameter after the name", mail(`filename="evil.exe"; =x`, octet, "base64", b64(document)), "name matches *.exe"},
		{"a second name with a trailing blank", mail(`filename="invoice.txt"; filename="evil.exe "`, octet, "base64", b64(document)), "name matches *.exe"},
		{"the Content-Type name", mail(`filename="invoice.txt"`, octet+`; name="evil.exe"`, "base64", b64(document)), "name matches *.exe"},
		{"base64 with a '!'", mail(`filename="tool.bin"`, octet, "base64", junk(prog, 2, 10, "!")), "blocked hash"},
		{"base64 with a '*' line", mail(`filename="tool.bin"`, octet, "base64", junk(prog, 3, -1, "*\r\n")), "blocked hash"},
		{"base64 with a stray '='", mail(`filename="tool.bin"`, octet, "base64", junk(prog, 1, 21, "=")), "blocked hash"},
		{"base64 with a junk first line", mail(`filename="tool.bin"`, octet, "base64", junk(prog, 0, -1, "!!! -- ** --\r\n")), "blocked hash"},
		{"a zip claiming 65535 entries", mail(`filename="files.zip"`, "application/zip", "base64", b64(zipTweaked(t, claims(65535), "a.txt", "evil.exe"))), "name matches *.exe in an archive"},
		{"a zip64 claiming 2^32 entries", mail(`filename="files.zip"`, "application/zip", "base64", b64(zipTweaked(t, zip64Claims(1<<32), "a.txt", "evil.exe"))), "name matches *.exe in an archive"},
		{"a NUL in a zipped name", mail(`filename="files.zip"`, "application/zip", "base64", b64(zipTweaked(t, nil, "a.txt", "evil.exe\x00.txt"))), "name matches *.exe in an archive"},
		{"a NUL in a part's name", mail(`filename*=utf-8''evil.exe%00.txt`, octet, "base64", b64(document)), "name matches *.exe"},
		{"20,000 zipped names, the .exe last", mail(`filename="files.zip"`, "application/zip", "base64", b64(zipTweaked(t, nil, many...))), "limit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := run(t, p, c.msg)
			if v.Key != c.key || v.Action != verdict.Reject {
				t.Fatalf("got %v key %q reason %q, want key %q", v, v.Key, v.Reason, c.key)
			}
			code, enh, _ := v.Reply()
			if c.key == "limit" && (code != 554 || enh != "5.6.0") || c.key != "limit" && code != 550 {
				t.Fatalf("reply %d %s", code, enh)
			}
		})
	}
	counter.Take()

	// With on_limit = "accept", a zip not listed whole is delivered,
	// logged and counted, and the parts after it still checked.
	p, counter = build(t, "block_names = [\"*.exe\"]\non_limit = \"accept\"\n", nil)
	unlisted := "Content-Type: application/zip\r\nContent-Disposition: attachment; filename=\"files.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(zipTweaked(t, nil, many...))
	if v := run(t, p, twoParts(unlisted)); v.Key != "name matches *.exe" {
		t.Fatalf("the part after an unlisted zip: %v %q", v, v.Key)
	}
	if v := run(t, p, mail(`filename="files.zip"`, "application/zip", "base64", b64(zipTweaked(t, nil, many...)))); v.Final() {
		t.Fatalf("unlisted zip, on_limit accept: %v", v)
	}
	if n := counter.Take().Hits["attachments:not checked: limit"]; n != 1 {
		t.Fatalf("unlisted zip counted %d times", n)
	}
}
