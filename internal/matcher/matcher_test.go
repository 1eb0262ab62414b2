package matcher

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"strings"
	"testing"
)

// naiveFind is the reference: the first pattern (by index) contained in text.
func naiveFind(patterns []Pattern, text []byte) int {
	for i, p := range patterns {
		if bytes.Contains(text, p.Bytes) {
			return i
		}
	}
	return -1
}

func mustNew(t testing.TB, patterns []Pattern) *Matcher {
	t.Helper()
	m, err := New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func pat(name, s string) Pattern { return Pattern{Name: name, Bytes: []byte(s)} }

func TestNewRejectsBadLengths(t *testing.T) {
	if _, err := New([]Pattern{pat("short", "0123456789abcde")}); err == nil {
		t.Error("15-byte pattern accepted")
	}
	if _, err := New([]Pattern{{Name: "long", Bytes: bytes.Repeat([]byte("x"), MaxPatternLen+1)}}); err == nil {
		t.Error("over-long pattern accepted")
	}
	if _, err := New([]Pattern{pat("ok", "0123456789abcdef")}); err != nil {
		t.Errorf("16-byte pattern refused: %v", err)
	}
}

func TestFind(t *testing.T) {
	sobig := "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3"
	klez := "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	short := "ABCDEFGHIJKLMNOP"
	patterns := []Pattern{pat("SOBIG", sobig), pat("KLEZ", klez), pat("SHORT", short),
		pat("PREFIX_OF_SOBIG_EXT", sobig[:40]+"zzzzzzzzzzzzzzzzzzzzzzz")}
	filler := strings.Repeat("R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=\r\n", 40)
	cases := []struct {
		name string
		text string
		want string
	}{
		{"empty", "", ""},
		{"clean", filler, ""},
		{"at start", sobig + "\r\n" + filler, "SOBIG"},
		{"at very end", filler + klez, "KLEZ"},
		{"whole text", short, "SHORT"},
		{"mid body", filler + short + filler, "SHORT"},
		{"after NUL bytes", "\x00\x00\x00" + filler + "\x00" + klez + "\x00", "KLEZ"},
		{"one byte short at end", filler + klez[:len(klez)-1], ""},
		{"shared prefix but different tail", filler + sobig[:40] + "zzzzzzzzzzzzzzzzzzzzzz", ""},
		{"prefix-sharing pattern itself", filler + sobig[:40] + "zzzzzzzzzzzzzzzzzzzzzzz", "PREFIX_OF_SOBIG_EXT"},
		{"overlapping occurrences", "ABCDEFGHABCDEFGHIJKLMNOPIJKLMNOP", "SHORT"},
	}
	m := mustNew(t, patterns)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := m.Find([]byte(c.text))
			name := ""
			if got >= 0 {
				name = m.Name(got)
			}
			if name != c.want {
				t.Errorf("Find = %q, want %q", name, c.want)
			}
		})
	}
}

func TestEmptyMatcherNeverMatches(t *testing.T) {
	m := mustNew(t, nil)
	s := m.NewScanner()
	if m.Find([]byte("anything at all, long enough to scan")) != -1 || s.Write([]byte("x")) {
		t.Fatal("empty matcher matched")
	}
}

// TestScannerEveryBoundary puts a pattern at every position relative to a
// chunk boundary, with chunks of every small size, and checks it is found.
func TestScannerEveryBoundary(t *testing.T) {
	p := pat("P", "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDya")
	m := mustNew(t, []Pattern{p})
	s := m.NewScanner()
	for chunk := 1; chunk <= 2*len(p.Bytes)+3; chunk++ {
		for at := 0; at < 3*chunk; at++ {
			text := append(bytes.Repeat([]byte{'.'}, at), p.Bytes...)
			text = append(text, "trailing"...)
			s.Reset()
			found := false
			for i := 0; i < len(text) && !found; i += chunk {
				found = s.Write(text[i:min(i+chunk, len(text))])
			}
			if !found || s.Hit() != 0 {
				t.Fatalf("chunk %d, pattern at %d: not found", chunk, at)
			}
		}
	}
}

func randomBase64Line(r *rand.Rand, n int) []byte {
	raw := make([]byte, n)
	for i := range raw {
		raw[i] = byte(r.Uint32())
	}
	return []byte(base64.StdEncoding.EncodeToString(raw))[:n]
}

// TestAgainstNaive compares the scanner with bytes.Contains on random texts
// with planted patterns of mixed lengths, cut into random chunks.
func TestAgainstNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		var patterns []Pattern
		for i := 0; i < 1+r.IntN(50); i++ {
			patterns = append(patterns, Pattern{Name: "p", Bytes: randomBase64Line(r, MinPatternLen+r.IntN(80))})
		}
		m := mustNew(t, patterns)
		text := randomBase64Line(r, r.IntN(5000))
		if r.IntN(3) > 0 {
			p := patterns[r.IntN(len(patterns))].Bytes
			at := r.IntN(len(text) + 1)
			text = append(text[:at:at], append(append([]byte{}, p...), text[at:]...)...)
		}
		want := naiveFind(patterns, text) >= 0
		if got := m.Find(text) >= 0; got != want {
			t.Fatalf("round %d: Find=%v want %v", round, got, want)
		}
		s := m.NewScanner()
		got := false
		for i := 0; i < len(text) && !got; {
			n := 1 + r.IntN(300)
			got = s.Write(text[i:min(i+n, len(text))])
			i += n
		}
		if got != want {
			t.Fatalf("round %d: scanner=%v want %v", round, got, want)
		}
		if got && !bytes.Contains(text, patterns[s.Hit()].Bytes) {
			t.Fatalf("round %d: scanner named a pattern that is not in the text", round)
		}
	}
}

func FuzzScanner(f *testing.F) {
	f.Add([]byte("xxuqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyayy"), uint8(7))
	f.Add([]byte("\x00\x00ABCDEFGHIJKLMNOP"), uint8(1))
	patterns := []Pattern{pat("A", "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDya"), pat("B", "ABCDEFGHIJKLMNOP"), pat("C", "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f")}
	m := mustNew(f, patterns)
	f.Fuzz(func(t *testing.T, text []byte, chunk uint8) {
		want := naiveFind(patterns, text) >= 0
		if got := m.Find(text) >= 0; got != want {
			t.Fatalf("Find=%v want %v", got, want)
		}
		s := m.NewScanner()
		n := int(chunk) + 1
		got := false
		for i := 0; i < len(text) && !got; i += n {
			got = s.Write(text[i:min(i+n, len(text))])
		}
		if got != want {
			t.Fatalf("scanner=%v want %v", got, want)
		}
	})
}

// TestFindEach compares FindEach with a naive count of every occurrence.
func TestFindEach(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for round := 0; round < 100; round++ {
		var patterns []Pattern
		for i := 0; i < 1+r.IntN(30); i++ {
			patterns = append(patterns, Pattern{Name: "p", Bytes: randomBase64Line(r, MinPatternLen+r.IntN(60))})
		}
		m := mustNew(t, patterns)
		text := randomBase64Line(r, r.IntN(3000))
		for k := r.IntN(5); k > 0; k-- {
			p := patterns[r.IntN(len(patterns))].Bytes
			at := r.IntN(len(text) + 1)
			text = append(text[:at:at], append(append([]byte{}, p...), text[at:]...)...)
		}
		got := make([]int, len(patterns))
		m.FindEach(text, func(p int) bool { got[p]++; return true })
		for i, p := range patterns {
			want := 0
			for j := 0; j+len(p.Bytes) <= len(text); j++ {
				if bytes.Equal(text[j:j+len(p.Bytes)], p.Bytes) {
					want++
				}
			}
			if got[i] != want {
				t.Fatalf("round %d pattern %d: %d occurrences reported, %d present", round, i, got[i], want)
			}
		}
	}
}
