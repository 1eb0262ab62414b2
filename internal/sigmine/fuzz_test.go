package sigmine_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"mailguard/internal/sigfile"
	"mailguard/internal/sigmine"
)

// FuzzMine mines whatever samples hold (a worm's copies are the attacker's
// bytes: any lines, any MIME): no panic; what it prints is a signature
// file that reads back as the signatures it found; and checking those
// against the same mail finds each in as many samples as mining claimed
// and in no clean message.
func FuzzMine(f *testing.F) {
	worm := "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyaQk9Nu7ZTfWx3pRs9Vq2cY8e"
	f.Add(worm, "Hi,\r\nsee the attachment.", "Re: your mail", "Hello", "Hello, the minutes are attached.\r\n")
	f.Add(worm, "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"+worm, "", "\x00\xff", worm[:30])
	f.Add(worm+"\r\n"+worm[5:]+"Z9", "=\r\n", "--b\r\n", "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b", "")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, common, a, b, c, clean string) {
		samples, cleanDir := filepath.Join(dir, "samples"), filepath.Join(dir, "clean")
		os.RemoveAll(samples)
		os.RemoveAll(cleanDir)
		os.MkdirAll(samples, 0o755)
		os.MkdirAll(cleanDir, 0o755)
		for i, own := range []string{a, b, c} {
			msg := "From: w@x.example\r\nSubject: hi\r\n\r\n" + own + "\r\n" + common + "\r\n"
			os.WriteFile(filepath.Join(samples, string(rune('1'+i))), []byte(msg), 0o644)
		}
		os.WriteFile(filepath.Join(cleanDir, "1"), []byte("From: p@example.edu\r\nSubject: minutes\r\n\r\n"+clean+"\r\n"), 0o644)
		opts := sigmine.Options{Samples: []string{samples}, Clean: []string{cleanDir}, Workers: 1}
		res, err := sigmine.Mine(opts)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		res.Write(&out, "FUZZ")
		sigs, err := sigfile.Parse("mined", &out)
		if err != nil {
			t.Fatalf("what sigmine printed does not read back: %v\n%s", err, out.String())
		}
		if len(sigs) != len(res.Signatures) {
			t.Fatalf("%d signatures found, %d read back:\n%s", len(res.Signatures), len(sigs), out.String())
		}
		for i, s := range sigs {
			if !bytes.Equal(s.Pattern, res.Signatures[i].Pattern) {
				t.Fatalf("signature %d found as %q, read back as %q", i+1, res.Signatures[i].Pattern, s.Pattern)
			}
		}
		if len(sigs) == 0 {
			return
		}
		check, err := sigmine.Check(sigs, opts)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range res.Signatures {
			if check.CleanHits[i] != 0 || check.SampleHits[i] != s.Samples || s.Samples < res.MinSamples {
				t.Fatalf("signature %d (%q): mined in %d samples, checked in %d, and %d clean messages", i+1, s.Pattern, s.Samples, check.SampleHits[i], check.CleanHits[i])
			}
		}
	})
}
