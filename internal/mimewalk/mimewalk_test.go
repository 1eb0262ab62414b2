package mimewalk

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"mailguard/internal/testmail"
)

func walk(t *testing.T, msg string, opts Options) ([]*Part, error) {
	t.Helper()
	opts.SHA256 = true
	var parts []*Part
	err := Walk(strings.NewReader(msg), opts, func(p *Part) error {
		c := *p
		parts = append(parts, &c)
		return nil
	})
	return parts, err
}

var (
	b64 = testmail.Base64
	qp  = testmail.QuotedPrintable
)

// payload is binary, with bytes that every encoding must carry.
var payload = append([]byte("MZ\x90\x00\x03\x00=\r\n\x00\xff line\r\n"), bytes.Repeat([]byte{0, 1, 2, 0xfe, '=', '\n'}, 100)...)

func multipart(boundary string, parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteString("--" + boundary + "\r\n" + p)
	}
	b.WriteString("--" + boundary + "--\r\n")
	return b.String()
}

func top(ct, body string) string {
	return "From: a@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: " + ct + "\r\n\r\n" + body
}

// latin1 is ISO-8859-1 text: converted to UTF-8 it would hash otherwise.
var latin1 = []byte("caf\xe9 cr\xe8me br\xfbl\xe9e")

func TestWalk(t *testing.T) {
	sum, sumLatin1 := sha256.Sum256(payload), sha256.Sum256(latin1)
	attach := func(name, enc, body string) string {
		return "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; " + name + "\r\nContent-Transfer-Encoding: " + enc + "\r\n\r\n" + body
	}
	cases := []struct {
		name  string
		msg   string
		names []string // of every leaf
		hit   int      // index of the leaf with payload's hash, 0: none
	}{
		{"base64", top(`multipart/mixed; boundary="b"`, multipart("b", "Content-Type: text/plain\r\n\r\nhi\r\n", attach(`filename="a.exe"`, "base64", b64(payload)))), []string{"", "a.exe"}, 2},
		{"quoted-printable, same bytes", top(`multipart/mixed; boundary="b"`, multipart("b", attach(`filename="a.exe"`, "quoted-printable", qp(payload)))), []string{"a.exe"}, 1},
		{"nested multiparts", top(`multipart/mixed; boundary="o"`, multipart("o", "Content-Type: multipart/alternative; boundary=\"i\"\r\n\r\n"+multipart("i", "Content-Type: text/plain\r\n\r\nt\r\n", "Content-Type: text/html\r\n\r\n<p>t</p>\r\n"), attach(`filename="x.bin"`, "base64", b64(payload)))), []string{"", "", "x.bin"}, 3},
		{"message/rfc822", top(`multipart/mixed; boundary="o"`, multipart("o", "Content-Type: message/rfc822\r\n\r\n"+top(`multipart/mixed; boundary="in"`, multipart("in", attach(`filename="inner.exe"`, "base64", b64(payload)))))), []string{"inner.exe"}, 1},
		{"RFC 2231 name", top(`multipart/mixed; boundary="b"`, multipart("b", attach(`filename*=utf-8''r%C3%A9sum%C3%A9.pdf.exe`, "base64", b64(payload)))), []string{"résumé.pdf.exe"}, 1},
		{"encoded-word name in Content-Type", top(`multipart/mixed; boundary="b"`, multipart("b", "Content-Type: application/octet-stream; name=\"=?iso-8859-1?Q?fa=E7ture.scr?=\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"+b64(payload))), []string{"façture.scr"}, 1},
		{"path in a name", top(`multipart/mixed; boundary="b"`, multipart("b", attach(`filename="..\\..\\windows\\evil.exe"`, "base64", b64(payload)))), []string{"evil.exe"}, 1},
		{"single part, base64", top("application/octet-stream; name=doc.pdf\r\nContent-Transfer-Encoding: base64", b64(payload)), []string{"doc.pdf"}, 1},
		{"no final boundary", top(`multipart/mixed; boundary="b"`, "--b\r\n"+attach(`filename="a.exe"`, "base64", b64(payload))), []string{"a.exe"}, 1},
		{"unknown encoding: raw bytes", top(`multipart/mixed; boundary="b"`, multipart("b", attach(`filename="a.exe"`, "x-uuencode", "begin 644 a\r\n"))), []string{"a.exe"}, 0},
		{"text in another charset: its bytes, not UTF-8", top(`multipart/mixed; boundary="b"`, multipart("b", "Content-Type: text/plain; charset=iso-8859-1; name=\"l.txt\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"+b64(latin1))), []string{"l.txt"}, 1},
		{"not MIME at all", "Subject: x\r\n\r\nplain text\r\n", []string{""}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			parts, err := walk(t, c.msg, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			hit := 0
			for _, p := range parts {
				names = append(names, p.Name)
				if p.Sums.SHA256 == sum || p.Sums.SHA256 == sumLatin1 {
					hit = p.Index
				}
			}
			if fmt.Sprint(names) != fmt.Sprint(c.names) || hit != c.hit {
				t.Fatalf("names %q hit %d, want %q %d", names, hit, c.names, c.hit)
			}
			if c.hit > 0 && parts[c.hit-1].Kind != KindExe && parts[c.hit-1].Type != "text/plain" {
				t.Errorf("kind %q", parts[c.hit-1].Kind)
			}
		})
	}
}

// A part header the parser could not take (a line without a colon, a
// name with a blank in it, a blank first line, the next boundary before
// its end) does not end the walk: its other fields count, and every
// later part is walked, as a mail client reads them.
func TestBrokenPartHeaderKeepsWalking(t *testing.T) {
	exe := "Content-Type: application/octet-stream; name=\"evil.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(payload)
	for _, broken := range []string{
		"Content-Type: text/plain\r\nbroken line without colon\r\nContent-Disposition: attachment; filename=\"a.txt\"\r\n\r\nbody\r\n",
		"Content-Type: text/plain\r\nX Bad: name\r\nContent-Disposition: attachment; filename=\"a.txt\"\r\n\r\nbody\r\n",
		" Content-Type: text/plain\r\nContent-Disposition: attachment; filename=\"a.txt\"\r\n\r\nbody\r\n",
		"Content-Type: text/plain\r\nX-\x01: y\r\nContent-Disposition: attachment;\r\n filename=\"a.txt\"\r\n",
	} {
		msg := top(`multipart/mixed; boundary="b"`, "preamble "+strings.Repeat("x", 10000)+"\r\n"+multipart("b", broken, exe))
		parts, err := walk(t, msg, Options{})
		if err != nil {
			t.Fatalf("%q: %v", broken, err)
		}
		var names []string
		for _, p := range parts {
			names = append(names, p.Name)
		}
		if fmt.Sprint(names) != "[a.txt evil.exe]" || parts[1].Sums.SHA256 != sha256.Sum256(payload) {
			t.Fatalf("%q: parts %q", broken, names)
		}
	}
}

// A boundary line the parser would stop at (words after it, a bare
// "\n" among "\r\n" lines) is taken for the boundary, as a mail client
// takes it: the parts after it are walked, each content unchanged.
func TestBrokenBoundaryKeepsWalking(t *testing.T) {
	exe := "Content-Type: application/octet-stream; name=\"evil.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(payload)
	for _, broken := range []string{"--b trailing words\r\n", "--b\n", "--b \rx\r\n", "--b\t" + strings.Repeat(" ", 100) + "\r\n"} {
		msg := top(`multipart/mixed; boundary="b"`, "--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n"+broken+exe+"--b--\r\n")
		parts, err := walk(t, msg, Options{})
		if err != nil || len(parts) != 2 {
			t.Fatalf("%q: %v, %d parts", broken, err, len(parts))
		}
		if parts[0].Sums.SHA256 != sha256.Sum256([]byte("body")) || parts[1].Name != "evil.exe" || parts[1].Sums.SHA256 != sha256.Sum256(payload) {
			t.Fatalf("%q: parts %q", broken, []string{parts[0].Name, parts[1].Name})
		}
	}
	// A final boundary with words after it ends the multipart.
	msg := top(`multipart/mixed; boundary="b"`, "--b\r\n"+exe+"--b-- and words\r\nepilogue\r\n")
	if parts, err := walk(t, msg, Options{}); err != nil || len(parts) != 1 || parts[0].Sums.SHA256 != sha256.Sum256(payload) {
		t.Fatalf("final boundary with words: %v, %d parts", err, len(parts))
	}
}

// Structures the parser once stopped at (found by fuzzing) are walked to
// their end: a header cut short, a multipart cut short inside another, a
// boundary right after a part header whatever its line ends.
func TestOddStructuresWalked(t *testing.T) {
	for _, msg := range []string{
		"00",
		"0\nContent-Type: multipart/x; boundary=\"b\"\n\n--b\r\n\n--b\n",
		"Content-Type: multipart/x; boundary=\"b\"\n\n--b\n\r\n--b-\n",
		"Content-Type: multipart/x; boundary=\"b\"\n\n--b\nContent-Type: multipart/x; boundary=0",
	} {
		if _, err := walk(t, msg, Options{}); err != nil {
			t.Errorf("%q: %v", msg, err)
		}
	}
}

func zipOf(t *testing.T, names ...string) []byte {
	var b bytes.Buffer
	zw := zip.NewWriter(&b)
	for _, n := range names {
		w, err := zw.Create(n)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(bytes.Repeat([]byte("content "), 1000))
	}
	zw.Close()
	return b.Bytes()
}

func TestZipNames(t *testing.T) {
	z := zipOf(t, "readme.txt", "docs/invoice.pdf.exe")
	msg := top(`multipart/mixed; boundary="b"`, multipart("b", "Content-Type: application/zip; name=files.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"+b64(z)))
	parts, err := walk(t, msg, Options{Archives: true})
	if err != nil {
		t.Fatal(err)
	}
	if p := parts[0]; p.Kind != KindZip || fmt.Sprint(p.ArchiveNames) != "[readme.txt docs/invoice.pdf.exe]" || p.ArchiveErr != "" {
		t.Fatalf("%+v %q", p.Kind, p.ArchiveErr)
	}
	// A directory larger than the end kept: said, not guessed.
	var many []string
	for i := 0; i < 400; i++ {
		many = append(many, fmt.Sprintf("%s-%d.txt", strings.Repeat("n", 40), i))
	}
	z = zipOf(t, many...)
	parts, _ = walk(t, top("application/zip; name=big.zip\r\nContent-Transfer-Encoding: base64", b64(z)), Options{Archives: true, ArchiveTail: 4096})
	if p := parts[0]; p.ArchiveNames != nil || !strings.Contains(p.ArchiveErr, "central directory") {
		t.Fatalf("%+v", p.ArchiveErr)
	}
}

func TestLimits(t *testing.T) {
	deep := "Subject: x\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n"
	for i := 0; i < 30; i++ {
		deep += fmt.Sprintf("--b%d\r\nContent-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n", i, i+1)
	}
	many := top(`multipart/mixed; boundary="b"`, strings.Repeat("--b\r\nContent-Type: text/plain\r\n\r\nx\r\n", 50)+"--b--\r\n")
	big := top("application/octet-stream\r\nContent-Transfer-Encoding: base64", b64(bytes.Repeat([]byte("z"), 5000)))
	cases := []struct {
		msg   string
		opts  Options
		limit string
	}{
		{deep, Options{MaxDepth: 20}, "max_depth"},
		{many, Options{MaxParts: 20}, "max_parts"},
		{big, Options{MaxDecoded: 4096}, "max_decoded"},
	}
	for _, c := range cases {
		_, err := walk(t, c.msg, c.opts)
		var le *LimitError
		if !errors.As(err, &le) || le.Limit != c.limit {
			t.Errorf("%s: got %v", c.limit, err)
		}
	}
	// Within the limits, no error.
	if _, err := walk(t, many, Options{MaxParts: 50}); err != nil {
		t.Error(err)
	}
}

// A MIME bomb (a hundred thousand empty parts, thousands of levels) hits
// the limits with memory bounded by them, not by the message.
func TestMimeBombBoundedMemory(t *testing.T) {
	var b strings.Builder
	b.WriteString(top(`multipart/mixed; boundary="b"`, ""))
	for i := 0; i < 100000; i++ {
		b.WriteString("--b\r\n\r\n\r\n")
	}
	var deep strings.Builder
	deep.WriteString("Subject: x\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n")
	for i := 0; i < 20000; i++ {
		fmt.Fprintf(&deep, "--b%d\r\nContent-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n", i, i+1)
	}
	for _, msg := range []string{b.String(), deep.String()} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := walk(t, msg, Options{})
		runtime.ReadMemStats(&after)
		var le *LimitError
		if !errors.As(err, &le) {
			t.Fatalf("got %v", err)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
			t.Errorf("%s: allocated %d MiB for a %d KiB message", le.Limit, grew>>20, len(msg)>>10)
		}
	}
}

func TestSniff(t *testing.T) {
	for head, kind := range map[string]string{"MZ\x90": KindExe, "\x7fELF\x02": KindELF, "%PDF-1.7": KindPDF, "PK\x03\x04": KindZip, "hello": "", "": ""} {
		if got := Sniff([]byte(head)); got != kind {
			t.Errorf("%q: %q", head, got)
		}
	}
}

func TestRing(t *testing.T) {
	r := &ring{buf: make([]byte, 8)}
	var all []byte
	for i, n := range []int{3, 4, 5, 1, 20, 2} {
		chunk := bytes.Repeat([]byte{byte('a' + i)}, n)
		for j := range chunk {
			chunk[j] += byte(j % 2)
		}
		r.Write(chunk)
		all = append(all, chunk...)
		got, off := r.kept()
		want := all[max(0, len(all)-8):]
		if !bytes.Equal(got, want) || off != int64(len(all)-len(want)) {
			t.Fatalf("after %d: %q at %d, want %q", len(all), got, off, want)
		}
	}
}

func FuzzWalk(f *testing.F) {
	f.Add(top(`multipart/mixed; boundary="b"`, multipart("b", "Content-Type: text/plain\r\n\r\nhi\r\n", "Content-Type: application/zip; name=a.zip\r\nContent-Transfer-Encoding: base64\r\n\r\nUEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==\r\n")))
	f.Add(top("message/rfc822", top(`multipart/alternative; boundary=x`, "--x\r\n\r\n--x--")))
	f.Add("Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n\x00")
	f.Add(top(`multipart/mixed; boundary="b"`, "pre\r\n--b\r\n:x\r\nX-A :b\r\nno colon\r\n\r\nx\r\n--b\r\n Content-Disposition: a; filename=\"a.txt\"; filename=\"b.exe\"; =x\r\n--b\r\nContent-Type: a/b; name*0*=utf-8''%41; name*1=.exe\r\nContent-Transfer-Encoding: base64\r\n\r\nTV!q*Q=A\r\n--b--\r\n"))
	f.Fuzz(func(t *testing.T, msg string) {
		Walk(strings.NewReader(msg), Options{SHA256: true, MD5: true, Archives: true, MaxParts: 50, MaxDepth: 8}, func(p *Part) error {
			if p.Sums.Size < 0 || strings.ContainsAny(p.Name, "/\\") || len(p.Names) > maxNames || len(p.Names) > 0 && p.Name != p.Names[0] {
				t.Fatalf("part %+v", p)
			}
			for _, n := range p.Names {
				if n == "" || len(n) > maxName || strings.ContainsAny(n, "/\\") {
					t.Fatalf("name %q", n)
				}
			}
			return nil
		})
	})
}

// Whatever a part header holds, and whatever bytes a part's content
// has (but its boundary), the content reaches the hash unchanged: the
// reader that bounds and mends headers never touches content.
func FuzzContentUnchanged(f *testing.F) {
	f.Add("Content-Type: text/plain\r\nno colon\r\n:x\r\n", []byte("line\r\n-- \r\nX: y\r\n\r\n--bb\r\n"), false)
	f.Add(" X-A :b\n\x00", []byte("\n-\n--\r"), true)
	f.Fuzz(func(t *testing.T, header string, content []byte, lf bool) {
		var h strings.Builder
		for _, line := range strings.Split(header, "\n") {
			line = strings.TrimRight(line, "\r")
			low := strings.ToLower(line)
			if strings.TrimLeft(line, " \t") == "" || strings.Contains(low, "content-") || strings.Contains(line, "\r") || strings.HasPrefix(line, "--") {
				continue
			}
			h.WriteString(line + "\r\n")
		}
		if bytes.Contains(content, []byte("--b")) || bytes.Contains(content, []byte("\r")) && lf {
			return
		}
		nl := "\r\n"
		if lf {
			nl = "\n"
		}
		hdr := strings.ReplaceAll(h.String(), "\r\n", nl)
		msg := "Content-Type: multipart/mixed; boundary=b" + nl + nl + "--b" + nl + hdr + nl + string(content) + nl + "--b--" + nl
		var got []*Part
		err := Walk(strings.NewReader(msg), Options{SHA256: true}, func(p *Part) error {
			got = append(got, p)
			return nil
		})
		if err != nil {
			if errors.As(err, new(*LimitError)) {
				return
			}
			t.Fatalf("%q: %v", msg, err)
		}
		if len(got) != 1 || got[0].Sums.SHA256 != sha256.Sum256(content) {
			t.Fatalf("%q: %d parts, content changed", msg, len(got))
		}
	})
}

// The zip lister takes any end of an archive.
func FuzzZipNames(f *testing.F) {
	for _, names := range [][]string{{"a.txt"}, {"evil.exe\x00.txt", "b"}, nil} {
		var b bytes.Buffer
		zw := zip.NewWriter(&b)
		for _, n := range names {
			zw.Create(n)
		}
		zw.Close()
		f.Add(b.Bytes(), uint16(0))
		f.Add(b.Bytes(), uint16(30))
	}
	f.Fuzz(func(t *testing.T, data []byte, keep uint16) {
		r := &ring{buf: make([]byte, int(keep)+1)}
		r.Write(data)
		names, _ := zipNames(r, int64(len(data)))
		if len(names) > maxArchiveNames {
			t.Fatalf("%d names", len(names))
		}
	})
}

// A sender's name is bounded (it reaches logs and replies), keeping its
// extension.
func TestLongNameClipped(t *testing.T) {
	long := strings.Repeat("a", 5000) + ".exe"
	parts, err := walk(t, top("application/octet-stream; name=\""+long+"\"", "x\r\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := parts[0].Name; len(n) != maxName || !strings.HasSuffix(n, ".exe") {
		t.Fatalf("name of %d bytes: ...%s", len(n), n[max(0, len(n)-10):])
	}
}

// BenchmarkWalk: decoding and hashing a message with a 1 MB base64
// attachment, as MB/s of the message's raw bytes.
func BenchmarkWalk(b *testing.B) {
	data := bytes.Repeat(payload, 1<<20/len(payload))
	msg := top(`multipart/mixed; boundary="b"`, multipart("b", "Content-Type: text/plain\r\n\r\nhello\r\n",
		"Content-Type: application/octet-stream; name=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"+b64(data)))
	for _, c := range []struct {
		name string
		opts Options
	}{
		{"structure only", Options{}},
		{"sha256", Options{SHA256: true}},
		{"sha256+md5", Options{SHA256: true, MD5: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				if err := Walk(strings.NewReader(msg), c.opts, func(*Part) error { return nil }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A part header of half a million short fields, or one endless field, is
// refused before the parser holds it: it would cost some 60 times its size.
func TestHeaderBomb(t *testing.T) {
	var many, long strings.Builder
	many.WriteString(top(`multipart/mixed; boundary="b"`, "--b\r\n"))
	for many.Len() < 4<<20 {
		many.WriteString("X-A: b\r\n")
	}
	many.WriteString("\r\nbody\r\n--b--\r\n")
	long.WriteString(top(`multipart/mixed; boundary="b"`, "--b\r\nX-Long: "+strings.Repeat("a", 4<<20)+"\r\n\r\nbody\r\n--b--\r\n"))
	for _, msg := range []string{many.String(), long.String(), strings.Repeat("X-Top: field\r\n", 20000) + "\r\nbody\r\n"} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := walk(t, msg, Options{})
		runtime.ReadMemStats(&after)
		var le *LimitError
		if !errors.As(err, &le) || le.Limit != "max_header" {
			t.Fatalf("got %v", err)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 32<<20 {
			t.Errorf("allocated %d MiB for a %d MiB message", grew>>20, len(msg)>>20)
		}
	}
	// Ordinary mail is untouched: a text body with "Name: value" lines
	// after a "-- " signature line, and a base64 body of 20,000 lines.
	sig := top("text/plain", "Hello\r\n-- \r\n"+strings.Repeat("Phone: 555\r\n", 1500))
	if _, err := walk(t, sig, Options{}); err != nil {
		t.Fatalf("signature text: %v", err)
	}
	big := top(`multipart/mixed; boundary="b"`, multipart("b", "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"+b64(bytes.Repeat([]byte("xyz"), 500000))))
	if _, err := walk(t, big, Options{}); err != nil {
		t.Fatalf("a 1.5 MB base64 part: %v", err)
	}
}

// The line decoder gives what encoding/base64 gives, whatever the line
// lengths, blanks and line ends, and whatever characters outside base64's
// alphabet are put among them (mail clients skip those); garbage never
// yields more bytes than it could hold.
func FuzzBase64(f *testing.F) {
	f.Add([]byte("hello, world"), uint8(76), uint8(0), uint8(3), []byte(nil))
	f.Add([]byte{0, 1, 2, 0xff}, uint8(4), uint8(1), uint8(1), []byte("!"))
	f.Add([]byte("x"), uint8(1), uint8(2), uint8(2), []byte("*=\x00"))
	f.Add(payload, uint8(76), uint8(0), uint8(0), []byte("\x05!\x09*\x30=\x00-"))
	f.Fuzz(func(t *testing.T, data []byte, width, style, chunk uint8, junk []byte) {
		enc := base64.StdEncoding.EncodeToString(data)
		w := int(width%100) + 1
		var b strings.Builder
		for i := 0; i < len(enc); i += w {
			b.WriteString(enc[i:min(i+w, len(enc))])
			switch style % 4 {
			case 0:
				b.WriteString("\r\n")
			case 1:
				b.WriteString("\n")
			case 2:
				b.WriteString(" \t\r\n ")
			case 3:
				b.WriteString("\r\n\r\n")
			}
		}
		text := b.String()
		// junk: pairs of (where, what); what is made a character outside
		// the alphabet.
		for i := 0; i+1 < len(junk); i += 2 {
			at := int(junk[i]) * len(text) / 256
			c := junk[i+1]
			if isBase64[c] {
				c = "!*=.-#\x00\xff"[int(c)%8]
			}
			text = text[:at] + string([]byte{c}) + text[at:]
		}
		r := newBase64Reader(iotest.OneByteReader(strings.NewReader(text)))
		if chunk%2 == 0 {
			r = newBase64Reader(strings.NewReader(text))
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%q: got %q (%v), want %q", text, got, err, data)
		}
		// Garbage: no panic, no more bytes than the input could hold.
		g, _ := io.ReadAll(newBase64Reader(bytes.NewReader(data)))
		if len(g) > len(data)*3/4+2 {
			t.Fatalf("decoded %d bytes from %d", len(g), len(data))
		}
	})
}

// sink records what Options.Content hands it; skip makes it want no more
// after the first write.
type sink struct {
	got  []byte
	skip bool
}

func (s *sink) Write(p []byte) (int, error) {
	s.got = append(s.got, p...)
	if s.skip {
		return len(p), ErrSkipContent
	}
	return len(p), nil
}

func TestContentWriter(t *testing.T) {
	big := strings.Repeat("A", 200000) // decodes to 150,000 bytes
	msg := "Content-Type: multipart/mixed; boundary=b\r\n\r\n" +
		"--b\r\nContent-Type: application/octet-stream; name=\"one.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQ" + big + "\r\n" +
		"--b\r\nContent-Type: text/plain; name=\"two.txt\"\r\n\r\nsecond part\r\n--b--\r\n"
	var sinks []*sink
	var parts []*Part
	err := Walk(strings.NewReader(msg), Options{Content: func(p *Part) io.Writer {
		s := &sink{skip: p.Name == "one.bin"}
		sinks = append(sinks, s)
		return s
	}}, func(p *Part) error {
		parts = append(parts, p)
		return nil
	})
	if err != nil || len(parts) != 2 || len(sinks) != 2 {
		t.Fatalf("%v: %d parts, %d sinks", err, len(parts), len(sinks))
	}
	if parts[0].Kind != KindExe || len(sinks[0].got) >= 150000 || parts[0].Sums.Size >= 150000 {
		t.Errorf("skipped part: kind %q, %d bytes written, size %d", parts[0].Kind, len(sinks[0].got), parts[0].Sums.Size)
	}
	if string(sinks[1].got) != "second part" {
		t.Errorf("second part: %q", sinks[1].got)
	}
	// With a hash asked for, the whole part is still read.
	sinks = nil
	parts = nil
	Walk(strings.NewReader(msg), Options{SHA256: true, Content: func(p *Part) io.Writer {
		s := &sink{skip: true}
		sinks = append(sinks, s)
		return s
	}}, func(p *Part) error { parts = append(parts, p); return nil })
	if parts[0].Sums.Size != 150003 {
		t.Errorf("hashed part size %d", parts[0].Sums.Size)
	}
}
