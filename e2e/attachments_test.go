package e2e

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// peakMemory is the most memory (resident, in bytes) a process has held.
func peakMemory(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/PID/status")
	return 0
}

// partHeaderBomb is a message of about size bytes whose one part header
// is short fields after a line first.
func partHeaderBomb(first string, size int) string {
	var b strings.Builder
	b.WriteString("From: <sender@example.org>\r\nTo: <user@example.edu>\r\nSubject: bomb\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n" + first)
	for b.Len() < size {
		b.WriteString("X-A: b\r\n")
	}
	b.WriteString("\r\nhello\r\n--b1--\r\n")
	return b.String()
}

// A part header of nine MiB, its count broken by a ":x" line, passes
// Postfix unchanged; mailguard refuses it without holding it (it held
// 576 MiB before).
func TestPostfixPartHeaderBomb(t *testing.T) {
	d := startMailguard(t, "listen = \"LISTEN\"\nfilters = [\"attachments\"]\n[attachments]\nblock_names = [\"*.exe\"]\n", nil)
	p := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", milterPort(t, d.port, "postfix")), "user@example.edu")
	before := peakMemory(t, d.cmd.Process.Pid)
	// Postfix passes ":x" unchanged, and rewrites "X-A :b" to "X-A:b" (a
	// field the old count took too: that form is the unit tests'); it
	// stores such lines as header records, with more overhead, so 8 MiB
	// of them already exceed its 10 MB limit.
	for first, size := range map[string]int{":x\r\n": 9 << 20, "X-A :b\r\n": 4 << 20} {
		file := filepath.Join(t.TempDir(), "msg")
		os.WriteFile(file, []byte(partHeaderBomb(first, size)), 0o644)
		out := p.swaks(t, "sender@example.org", "user@example.edu", file)
		if !strings.Contains(out, "<** 554 5.6.0 Message structure too complex to check") {
			t.Errorf("%q: not refused past the header limit:\n%s", first, tail(out))
		}
	}
	peak := peakMemory(t, d.cmd.Process.Pid)
	t.Logf("mailguard's peak memory: %d MiB before, %d MiB after a 9 MiB and a 4 MiB part header", before>>20, peak>>20)
	if peak > 150<<20 {
		t.Fatalf("mailguard held %d MiB for a message of 9 MiB", peak>>20)
	}
	if l := d.lines("decision", "filter=attachments", "max_header"); len(l) != 2 {
		t.Fatalf("decision lines:\n%s", strings.Join(l, "\n"))
	}
}

// tricked is a multipart message: a text part, then each part given
// (header and content).
func tricked(parts ...string) string {
	var b strings.Builder
	b.WriteString("From: <sender@example.org>\r\nTo: <user@example.edu>\r\nSubject: files\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n")
	for _, p := range parts {
		b.WriteString("--b1\r\n" + p)
	}
	b.WriteString("--b1--\r\n")
	return b.String()
}

func b64Lines(data []byte) string {
	enc := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	return b.String()
}

func attached(disposition, ctype, body string) string {
	return "Content-Type: " + ctype + "\r\nContent-Disposition: attachment; " + disposition + "\r\nContent-Transfer-Encoding: base64\r\n\r\n" + body
}

// zipWith is a stored zip of names, its end record then changed by tweak.
func zipWith(tweak func([]byte) []byte, names ...string) []byte {
	var b bytes.Buffer
	zw := zip.NewWriter(&b)
	for _, n := range names {
		w, _ := zw.CreateHeader(&zip.FileHeader{Name: n, Method: zip.Store})
		w.Write([]byte("some text\r\n"))
	}
	zw.Close()
	if tweak == nil {
		return b.Bytes()
	}
	return tweak(b.Bytes())
}

// Attachment tricks a mail client still opens, through Postfix: each
// passed the filter once; each is refused now, and a plain message still
// delivered.
func TestPostfixAttachmentTricks(t *testing.T) {
	program := append([]byte("MZ\x90\x00\x03\x00\x00\x00"), bytes.Repeat([]byte("\x00\xffprogram bytes\r\n"), 200)...)
	d := startMailguard(t, `listen = "LISTEN"
filters = ["attachments"]
[attachments]
block_names = ["*.exe"]
block_disguised_executables = true
hashes = ["bad.hsb"]
`, map[string]string{"bad.hsb": fmt.Sprintf("%x:%d:Feed.Bad.Program\n", sha256.Sum256(program), len(program))})
	p := startPostfix(t, fmt.Sprintf("inet:127.0.0.1:%d", milterPort(t, d.port, "postfix")), "user@example.edu")
	send := func(t *testing.T, data string) string {
		file := filepath.Join(t.TempDir(), "msg")
		os.WriteFile(file, []byte(data), 0o644)
		return p.swaks(t, "sender@example.org", "user@example.edu", file)
	}
	octet := "application/octet-stream"
	// (The hash list alone knows the program when it is named .com: a
	// program's name, so not disguised, and no *.exe.)
	doc := b64Lines([]byte("%PDF-1.7\n" + strings.Repeat("a harmless document\n", 100)))
	prog := b64Lines(program)
	lines := strings.SplitAfter(prog, "\r\n")
	exe := attached(`filename="evil.exe"`, octet, prog)
	claim65535 := func(z []byte) []byte {
		binary.LittleEndian.PutUint16(z[len(z)-14:], 65535)
		binary.LittleEndian.PutUint16(z[len(z)-12:], 65535)
		return z
	}
	zip64 := func(z []byte) []byte {
		end := len(z) - 22
		rec := make([]byte, 56)
		copy(rec, "PK\x06\x06")
		binary.LittleEndian.PutUint64(rec[4:], 44)
		binary.LittleEndian.PutUint64(rec[24:], 1<<32)
		binary.LittleEndian.PutUint64(rec[32:], 1<<32)
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
	many := make([]string, 20000)
	for i := range many {
		many[i] = fmt.Sprintf("file-%05d.txt", i)
	}
	many[len(many)-1] = "evil.exe"
	cases := []struct{ name, msg, reply string }{
		{"a malformed part header before the .exe", tricked("Content-Type: text/plain\r\nthis line has no colon\r\n\r\nhello\r\n", exe), "550 5.7.0 Attachment refused: evil.exe"},
		{"a duplicate filename", tricked(attached(`filename="invoice.txt"; filename="evil.exe"`, octet, doc)), "550 5.7.0 Attachment refused: evil.exe"},
		{"an invalid parameter", tricked(attached(`filename="evil.exe"; =x`, octet, doc)), "550 5.7.0 Attachment refused: evil.exe"},
		{"a second name with a trailing blank", tricked(attached(`filename="invoice.txt"; filename="evil.exe "`, octet, doc)), "550 5.7.0 Attachment refused: evil.exe"},
		{"base64 with '!' and '*'", tricked(attached(`filename="tool.com"`, octet, lines[0][:9]+"!"+lines[0][9:]+"*\r\n"+strings.Join(lines[1:], ""))), "550 5.7.0 Attachment refused: tool.com"},
		{"base64 with a stray '='", tricked(attached(`filename="tool.com"`, octet, lines[0]+lines[1][:21]+"="+lines[1][21:]+strings.Join(lines[2:], ""))), "550 5.7.0 Attachment refused: tool.com"},
		{"base64 with a junk first line", tricked(attached(`filename="tool.com"`, octet, "!!! -- ** --\r\n"+prog)), "550 5.7.0 Attachment refused: tool.com"},
		{"a zip claiming 65535 entries", tricked(attached(`filename="files.zip"`, "application/zip", b64Lines(zipWith(claim65535, "a.txt", "evil.exe")))), "550 5.7.0 Attachment refused: files.zip"},
		{"a zip64 claiming 2^32 entries", tricked(attached(`filename="files.zip"`, "application/zip", b64Lines(zipWith(zip64, "a.txt", "evil.exe")))), "550 5.7.0 Attachment refused: files.zip"},
		{"a NUL in a zipped name", tricked(attached(`filename="files.zip"`, "application/zip", b64Lines(zipWith(nil, "a.txt", "evil.exe\x00.txt")))), "550 5.7.0 Attachment refused: files.zip"},
		{"20,000 zipped names, the .exe last", tricked(attached(`filename="files.zip"`, "application/zip", b64Lines(zipWith(nil, many...)))), "554 5.6.0 Message structure too complex to check"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if out := send(t, c.msg); !strings.Contains(out, "<** "+c.reply) {
				t.Fatalf("not refused with %q:\n%s", c.reply, tail(out))
			}
		})
	}
	out := send(t, tricked(attached(`filename="report.pdf"`, "application/pdf", doc), attached(`filename="files.zip"`, "application/zip", b64Lines(zipWith(nil, "a.txt", "b.pdf")))))
	if !strings.Contains(out, "<-  250 2.0.0") {
		t.Fatalf("a plain message not accepted:\n%s", tail(out))
	}
	if got := len(p.delivered(t, "user", 1)); got != 1 {
		t.Fatalf("%d messages delivered, want the plain one", got)
	}
}
