package mimewalk

import (
	"crypto/sha256"
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
