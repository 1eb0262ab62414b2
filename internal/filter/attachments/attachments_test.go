package attachments_test

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"mailguard/internal/filter/attachments"
	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all"
	"mailguard/internal/filters/filterstest"
	"mailguard/internal/logging"
	"mailguard/internal/pipeline"
	"mailguard/internal/scan"
	"mailguard/internal/stats"
	"mailguard/internal/testmail"
	"mailguard/internal/verdict"
)

func build(t *testing.T, section string, files map[string]string) (*pipeline.Pipeline, *stats.Counter) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
	}
	return filterstest.Build(t, dir, "filters = [\"attachments\"]\n[attachments]\n"+section, pipeline.Env{})
}

func run(t *testing.T, p *pipeline.Pipeline, msg string) verdict.Verdict {
	return filterstest.Scan(t, p, msg).Verdict
}

var (
	b64 = testmail.Base64
	qp  = testmail.QuotedPrintable
)

// mail is a multipart message: a text part, then one attachment.
func mail(name, ctype, enc, body string) string {
	return "From: a@example.org\r\nTo: b@example.com\r\nSubject: files\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"=_b\"\r\n\r\n" +
		"--=_b\r\nContent-Type: text/plain\r\n\r\nHere it is.\r\n" +
		"--=_b\r\nContent-Type: " + ctype + "\r\nContent-Disposition: attachment; " + name + "\r\nContent-Transfer-Encoding: " + enc + "\r\n\r\n" +
		body + "--=_b--\r\n"
}

var (
	program  = append([]byte("MZ\x90\x00\x03\x00\x00\x00"), bytes.Repeat([]byte("\x00\xffprogram=\r\n"), 300)...)
	document = []byte("%PDF-1.7\n" + strings.Repeat("a harmless document\n", 200))
)

func zipOf(t *testing.T, names ...string) []byte {
	var b bytes.Buffer
	zw := zip.NewWriter(&b)
	for _, n := range names {
		w, _ := zw.Create(n)
		w.Write(document)
	}
	zw.Close()
	return b.Bytes()
}

func TestRules(t *testing.T) {
	sum := sha256.Sum256(program)
	hsb := fmt.Sprintf("%x:%d:Feed.Bad.Program\n", sum, len(program))
	p, _ := build(t, `hashes = ["bad.hsb"]
block_names = ["*.scr", "*.PIF", "*.exe"]
block_double_extensions = true
block_disguised_executables = true
`, map[string]string{"bad.hsb": hsb})
	octet := "application/octet-stream"
	cases := []struct {
		name, msg, key string // key "" : accepted
	}{
		{"clean document", mail(`filename="report.pdf"`, "application/pdf", "base64", b64(document)), ""},
		{"listed hash, base64", mail(`filename="tool.bin"`, octet, "base64", b64(program)), "blocked hash"},
		{"listed hash, quoted-printable", mail(`filename="tool.bin"`, octet, "quoted-printable", qp(program)), "blocked hash"},
		{"listed hash, no name", mail(`x=y`, octet, "base64", b64(program)), "blocked hash"},
		{"*.exe, any case", mail(`filename="SETUP.EXE"`, octet, "base64", b64(document)), "name matches *.exe"},
		{"*.pif pattern in upper case", mail(`filename="x.pif"`, octet, "base64", b64(document)), "name matches *.pif"},
		{"trailing dot and blank", mail(`filename="run.scr. "`, octet, "base64", b64(document)), "name matches *.scr"},
		{"RFC 2231 name", mail(`filename*=utf-8''factur%C3%A9.scr`, octet, "base64", b64(document)), "name matches *.scr"},
		{"encoded-word name", mail(`filename="=?utf-8?B?csOpc3Vtw6kuZXhl?="`, octet, "base64", b64(document)), "name matches *.exe"},
		{"double extension", mail(`filename="invoice.pdf.js"`, octet, "base64", b64(document)), "double extension"},
		{"double extension, blanks between", mail(`filename="invoice.pdf      .vbs"`, octet, "base64", b64(document)), "double extension"},
		{"two extensions, harmless", mail(`filename="backup.tar.gz"`, octet, "base64", b64(document)), ""},
		{"two extensions, the first no document's", mail(`filename="tool.v2.js"`, octet, "base64", b64(document)), ""},
		{"program named as a document", mail(`filename="invoice.pdf"`, "application/pdf", "base64", b64(program[:2000])), "disguised executable"},
		{"program declared an image", mail(`x=y`, "image/png", "base64", b64(program[:2000])), "disguised executable"},
		{"in a zip", mail(`filename="docs.zip"`, "application/zip", "base64", b64(zipOf(t, "readme.txt", "sub/payload.exe"))), "name matches *.exe in an archive"},
		{"double extension in a zip", mail(`filename="docs.zip"`, "application/zip", "base64", b64(zipOf(t, "scan.jpg.bat"))), "double extension in an archive"},
		{"harmless zip", mail(`filename="docs.zip"`, "application/zip", "base64", b64(zipOf(t, "a.txt", "b.pdf"))), ""},
	}
	// Each message as it is (small: kept and walked at its end) and with
	// an epilogue that makes it stream through a walk of its own.
	epilogue := strings.Repeat("an epilogue line\r\n", 1200)
	for _, c := range cases {
		if len(c.msg) > attachments.SmallMessage {
			t.Fatalf("%s: %d bytes, not a small message", c.name, len(c.msg))
		}
		cases = append(cases, struct{ name, msg, key string }{c.name + ", streamed", c.msg + epilogue, c.key})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := run(t, p, c.msg)
			if c.key == "" {
				if v.Final() {
					t.Fatalf("refused: %v (%s)", v, v.Reason)
				}
				return
			}
			code, enh, text := v.Reply()
			if v.Action != verdict.Reject || code != 550 || enh != "5.7.0" || !strings.HasPrefix(text, "Attachment refused: ") || v.Key != c.key {
				t.Fatalf("got %v key %q reason %q", v, v.Key, v.Reason)
			}
		})
	}
}

func TestLimitsAndMalformed(t *testing.T) {
	var bomb strings.Builder
	bomb.WriteString("Subject: x\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n")
	for i := 0; i < 5000; i++ {
		bomb.WriteString("--b\r\n\r\nx\r\n")
	}
	bomb.WriteString("--b--\r\n")
	// A boundary line with words after it, then a program: read as a
	// mail client reads it, the program is found.
	malformed := "Subject: x\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\r\nx\r\n--b and words\r\nContent-Disposition: attachment; filename=a.exe\r\n\r\ny\r\n--b--\r\n"

	p, counter := build(t, "block_names = [\"*.exe\"]\nmax_parts = 100\n", nil)
	if v := run(t, p, bomb.String()); v.Code != 554 || v.Enhanced != "5.6.0" || v.Key != "limit" {
		t.Fatalf("bomb: %v %q", v, v.Key)
	}
	if v := run(t, p, malformed); v.Key != "name matches *.exe" {
		t.Fatalf("a part after a broken boundary: %v %q", v, v.Key)
	}
	p, counter = build(t, "block_names = [\"*.exe\"]\nmax_parts = 100\non_limit = \"accept\"\non_malformed = \"reject\"\n", nil)
	if v := run(t, p, bomb.String()); v.Final() {
		t.Fatalf("bomb, on_limit accept: %v", v)
	}
	if n := counter.Take().Hits["attachments:not checked: limit"]; n != 1 {
		t.Fatalf("limit counted %d times", n)
	}
}

// A refused attachment refuses the message at the body chunk that ends
// it; the rest of the body is not needed. And a message dropped midway
// leaves no walk behind.
func TestEarlyVerdictAndNoLeak(t *testing.T) {
	p, counter := build(t, "block_names = [\"*.exe\"]\n", nil)
	before := runtime.NumGoroutine()
	refused := mail(`filename="a.exe"`, "application/octet-stream", "base64", b64(document)) + strings.Repeat("trailing text\r\n", 5000)
	clean := mail(`filename="a.pdf"`, "application/pdf", "base64", b64(bytes.Repeat(document, 20)))
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		messages(t, p, refused, clean)
	}()
	select {
	case <-finished:
	case <-time.After(30 * time.Second):
		t.Fatal("a message's Close hung: its walk is still waiting for input")
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("%d goroutines left behind", n-before)
	}
	// A dropped message is not malformed MIME.
	for key, n := range counter.Take().Hits {
		if strings.HasPrefix(key, "attachments:not checked") {
			t.Fatalf("dropped messages counted as %s (%d)", key, n)
		}
	}
}

// messages sends 50 messages, every other one refused, the others dropped
// midway as when the MTA hangs up.
func messages(t *testing.T, p *pipeline.Pipeline, refused, clean string) {
	for i := 0; i < 50; i++ {
		msg := refused
		if i%2 == 1 {
			msg = clean
		}
		m, _ := p.Begin(&pipeline.Conn{}, pipeline.AllStages, "a@example.org", "")
		m.Rcpt("b@example.com", "")
		head, body, _ := strings.Cut(msg, "\r\n\r\n")
		for _, line := range strings.Split(head, "\r\n") {
			name, value, _ := strings.Cut(line, ": ")
			m.Header(name, value)
		}
		m.EndOfHeaders()
		var v verdict.Verdict
		for j := 0; j < len(body) && !v.Final(); j += 4096 {
			v = m.Body([]byte(body[j:min(j+4096, len(body))]))
			if i%2 == 1 && j > 8192 {
				break // the MTA hangs up midway
			}
		}
		if i%2 == 0 && !v.Final() {
			t.Error("not refused before the end of the body")
		}
		m.Close()
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bad.hsb"), []byte("nothex:1:x\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "empty.hsb"), nil, 0o644)
	cases := map[string]string{
		"hashes = [\"bad.hsb\"]":     "bad.hsb:1: hash \"nothex\" is not hexadecimal",
		"hashes = [\"missing.hsb\"]": "attachments.hashes: ",
		"hashes = [\"empty.hsb\"]":   "the filter would pass every message",
		"block_names = [\"a/b\"]":    `attachments.block_names: "a/b" is not a file name pattern`,
		"block_names = [\"[\"]":      `"[" is not a file name pattern`,
		"":                           "the attachments filter needs [attachments] hashes",
		"block_names = [\"*.exe\"]\nmax_depth = 0":  "attachments.max_depth: want 1 to 100",
		"block_names = [\"*.exe\"]\nreply = \"%s\"": "the only placeholder is %v",
	}
	for section, want := range cases {
		cfgFile := filepath.Join(dir, "mailguard.toml")
		os.WriteFile(cfgFile, []byte("filters = [\"attachments\"]\n[attachments]\n"+section+"\n"), 0o644)
		cfg, err := filters.Load(cfgFile)
		if err == nil {
			err = filters.Check(cfg, pipeline.Env{Log: logging.Discard()})
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", section, err, want)
		}
	}
}

func BenchmarkWalkAndHash(b *testing.B) {
	sum := sha256.Sum256([]byte("not in the message"))
	p, _ := build(&testing.T{}, "hashes = [\"x.hsb\"]\nblock_names = [\"*.exe\"]\n", map[string]string{"x.hsb": fmt.Sprintf("%x:*:X\n", sum), "x.md5": ""})
	big := bytes.Repeat(document, 250) // ~1 MB attachment
	msg := mail(`filename="big.pdf"`, "application/pdf", "base64", b64(big))
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if out, _ := scan.Message(p, strings.NewReader(msg)); out.Verdict.Final() {
			b.Fatal(out.Verdict)
		}
	}
}
