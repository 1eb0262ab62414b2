package mimewalk

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// Base64 with characters outside its alphabet among the lines decodes
// as a mail client decodes it (skipping them), so the hash is the file's.
func TestBase64JunkSkipped(t *testing.T) {
	enc := b64(payload)
	lines := strings.SplitAfter(enc, "\r\n")
	junk := map[string]string{
		"a '!' in a line":      strings.Replace(enc, lines[1], lines[1][:10]+"!"+lines[1][10:], 1),
		"a '*' line":           lines[0] + "*\r\n" + strings.Join(lines[1:], ""),
		"a stray '='":          lines[0] + lines[1][:20] + "=" + lines[1][20:] + strings.Join(lines[2:], ""),
		"a junk first line":    "#!* --- *!#\r\n" + enc,
		"'=' at a quantum end": lines[0] + lines[1][:16] + "==" + lines[1][16:] + strings.Join(lines[2:], ""),
	}
	want := sha256.Sum256(payload)
	for name, body := range junk {
		parts, err := walk(t, top("application/octet-stream; name=a.bin\r\nContent-Transfer-Encoding: base64", body), Options{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if p := parts[0]; p.Sums.SHA256 != want || p.Sums.Size != int64(len(payload)) {
			t.Errorf("%s: %d bytes, not the file's hash", name, p.Sums.Size)
		}
	}
}

// Every name a part carries is reported, however broken the parameters
// around it: the standard parser drops a field with a duplicate or
// invalid parameter, mail clients show one of its names.
func TestEveryName(t *testing.T) {
	cases := []struct{ disposition, ctype, want string }{
		{`attachment; filename="invoice.txt"; filename="evil.exe"`, "application/octet-stream", "evil.exe"},
		{`attachment; filename="evil.exe"; =x`, "application/octet-stream", "evil.exe"},
		{`attachment; filename="invoice.txt"; filename="evil.exe "`, "application/octet-stream", "evil.exe "},
		{`attachment; filename="invoice.txt"; filename=evil.exe `, "application/octet-stream", "evil.exe"},
		{`attachment; filename="invoice.txt"`, `application/octet-stream; name="evil.exe"`, "evil.exe"},
		{`attachment; filename=a.txt; filename*0*=utf-8''%65vil; filename*1=".exe"`, "application/octet-stream", "evil.exe"},
		{`attachment; filename=a.txt; filename*=iso-8859-1''%E9vil.exe`, "application/octet-stream", "évil.exe"},
		{`attachment; filename="a.txt"; filename="=?utf-8?B?ZXZpbC5leGU=?="`, "application/octet-stream", "evil.exe"},
		{`attachment; filename="..\\dir\\evil.exe"; size=`, "application/octet-stream", "evil.exe"},
	}
	for _, c := range cases {
		msg := top(`multipart/mixed; boundary="b"`, multipart("b", "Content-Type: "+c.ctype+"\r\nContent-Disposition: "+c.disposition+"\r\n\r\nx\r\n"))
		parts, err := walk(t, msg, Options{})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, n := range parts[0].Names {
			found = found || n == c.want
		}
		if !found || parts[0].Name != parts[0].Names[0] {
			t.Errorf("%s | %s: names %q, want %q among them", c.disposition, c.ctype, parts[0].Names, c.want)
		}
	}
}

// zipPatched builds a zip of names, then lets patch change its end record
// (the last 22 bytes).
func zipPatched(t *testing.T, patch func(z []byte) []byte, names ...string) []byte {
	z := zipOf(t, names...)
	if patch != nil {
		z = patch(z)
	}
	return z
}

// zip64 rewrites a zip's end record as a zip64 one that claims count
// entries, with the classic record's fields saying "see zip64".
func zip64(count uint64) func([]byte) []byte {
	return func(z []byte) []byte {
		end := len(z) - 22
		dirSize := binary.LittleEndian.Uint32(z[end+12:])
		dirOff := binary.LittleEndian.Uint32(z[end+16:])
		rec := make([]byte, 56)
		copy(rec, "PK\x06\x06")
		binary.LittleEndian.PutUint64(rec[4:], 44)
		binary.LittleEndian.PutUint64(rec[24:], count)
		binary.LittleEndian.PutUint64(rec[32:], count)
		binary.LittleEndian.PutUint64(rec[40:], uint64(dirSize))
		binary.LittleEndian.PutUint64(rec[48:], uint64(dirOff))
		loc := make([]byte, 20)
		copy(loc, "PK\x06\x07")
		binary.LittleEndian.PutUint64(loc[8:], uint64(end))
		binary.LittleEndian.PutUint32(loc[16:], 1)
		classic := append([]byte(nil), z[end:]...)
		for i := 8; i < 12; i++ {
			classic[i] = 0xff
		}
		for i := 12; i < 20; i++ {
			classic[i] = 0xff
		}
		out := append(append(append(z[:end:end], rec...), loc...), classic...)
		return out
	}
}

func count16(n uint16) func([]byte) []byte {
	return func(z []byte) []byte {
		end := len(z) - 22
		binary.LittleEndian.PutUint16(z[end+8:], n)
		binary.LittleEndian.PutUint16(z[end+10:], n)
		return z
	}
}

// A zip is listed from its directory's records, whatever its end record
// claims; names keep their NUL; what cannot be listed whole says so.
func TestZipTricks(t *testing.T) {
	zipPart := func(z []byte) string {
		return top(`multipart/mixed; boundary="b"`, multipart("b", "Content-Type: application/zip; name=files.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"+b64(z)))
	}
	listed := []struct {
		name string
		zip  []byte
		want string
	}{
		{"count 65535", zipPatched(t, count16(65535), "a.txt", "evil.exe"), "[a.txt evil.exe]"},
		{"count 0", zipPatched(t, count16(0), "a.txt", "evil.exe"), "[a.txt evil.exe]"},
		{"zip64 count 2^32", zipPatched(t, zip64(1<<32), "a.txt", "evil.exe"), "[a.txt evil.exe]"},
		{"zip64, true count", zipPatched(t, zip64(2), "a.txt", "evil.exe"), "[a.txt evil.exe]"},
		{"a NUL in a name", zipPatched(t, nil, "evil.exe\x00.txt"), "[evil.exe\x00.txt]"},
		{"a comment with an end record in it", func() []byte {
			var b bytes.Buffer
			zw := zip.NewWriter(&b)
			zw.Create("evil.exe")
			zw.SetComment("PK\x05\x06" + strings.Repeat("\x00", 30))
			zw.Close()
			return b.Bytes()
		}(), "[evil.exe]"},
	}
	for _, c := range listed {
		parts, err := walk(t, zipPart(c.zip), Options{Archives: true})
		if err != nil {
			t.Fatal(err)
		}
		if p := parts[0]; fmt.Sprintf("%q", p.ArchiveNames) != fmt.Sprintf("%q", strings.Fields(strings.Trim(c.want, "[]"))) || p.ArchiveErr != "" {
			t.Errorf("%s: names %q, %q", c.name, p.ArchiveNames, p.ArchiveErr)
		}
	}
	// 20,000 names, the .exe last: the directory is larger than the end
	// kept, which is said.
	many := make([]string, 20000)
	for i := range many {
		many[i] = fmt.Sprintf("file-%05d.txt", i)
	}
	many[len(many)-1] = "evil.exe"
	var zb bytes.Buffer
	zw := zip.NewWriter(&zb)
	for _, n := range many {
		zw.CreateHeader(&zip.FileHeader{Name: n, Method: zip.Store})
	}
	zw.Close()
	z := zb.Bytes()
	parts, _ := walk(t, zipPart(z), Options{Archives: true})
	if p := parts[0]; p.ArchiveErr == "" {
		t.Errorf("20,000 names: listed %d, no error", len(p.ArchiveNames))
	}
	// With the end kept whole, the cap on names: listed up to it, and
	// said.
	parts, _ = walk(t, zipPart(z), Options{Archives: true, ArchiveTail: 4 << 20})
	if p := parts[0]; len(p.ArchiveNames) != maxArchiveNames || !strings.Contains(p.ArchiveErr, "more than") {
		t.Errorf("cap: listed %d, %q", len(p.ArchiveNames), p.ArchiveErr)
	}
	// A zip cut short: no end record.
	parts, _ = walk(t, zipPart(z[:len(z)/2]), Options{Archives: true})
	if p := parts[0]; p.ArchiveErr == "" {
		t.Errorf("cut zip: no error")
	}
}

// A base64 body of one endless line is decoded as it streams, not kept.
func TestBase64OneLine(t *testing.T) {
	data := bytes.Repeat(payload, 4<<20/len(payload))
	msg := top("application/octet-stream; name=a.bin\r\nContent-Transfer-Encoding: base64", base64.StdEncoding.EncodeToString(data)+"\r\n")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	parts, err := walk(t, msg, Options{})
	runtime.ReadMemStats(&after)
	if err != nil || parts[0].Sums.SHA256 != sha256.Sum256(data) {
		t.Fatalf("%v: not the file's hash", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 2<<20 {
		t.Errorf("allocated %d KiB for a line of %d MiB", grew>>10, len(msg)>>20)
	}
}
