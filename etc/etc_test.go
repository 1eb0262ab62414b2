package etc_test

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"mailguard/etc"
	"mailguard/internal/matcher"
	"mailguard/internal/sigfile"
)

const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

func bundled(t *testing.T) *matcher.Matcher {
	t.Helper()
	sigs, err := sigfile.Parse("signatures", bytes.NewReader(etc.Signatures))
	if err != nil {
		t.Fatal(err)
	}
	m, err := matcher.New(sigfile.Patterns(sigs))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// The bundled signatures catch the EICAR test file however a mail client
// wraps its base64 (any width from 64), and pasted as text.
func TestBundledSignaturesCatchEICAR(t *testing.T) {
	m := bundled(t)
	enc := base64.StdEncoding.EncodeToString([]byte(eicar))
	for _, width := range []int{64, 72, 76} {
		var body strings.Builder
		body.WriteString("--b\r\nContent-Type: application/octet-stream; name=\"eicar.com\"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
		for s := enc; len(s) > 0; {
			n := min(width, len(s))
			body.WriteString(s[:n] + "\r\n")
			s = s[n:]
		}
		if p := m.Find([]byte(body.String())); p < 0 || m.Name(p) != "EICAR_TEST_FILE.B64" {
			t.Errorf("base64 at width %d not caught", width)
		}
	}
	if p := m.Find([]byte("Hello,\r\n" + eicar + "\r\n")); p < 0 || m.Name(p) != "EICAR_TEST_FILE" {
		t.Error("pasted EICAR not caught")
	}
}

func TestBundledSignaturesSpareOrdinaryMail(t *testing.T) {
	m := bundled(t)
	body := "Dear colleague,\r\nplease find the minutes attached.\r\n" +
		base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("minutes of the meeting "), 200))
	if p := m.Find([]byte(body)); p >= 0 {
		t.Errorf("ordinary mail matched %s", m.Name(p))
	}
}
