package hashlist

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sums(data string) *Sums {
	return &Sums{SHA256: sha256.Sum256([]byte(data)), SHA1: sha1.Sum([]byte(data)), MD5: md5.Sum([]byte(data)), Size: int64(len(data))}
}

func hexOf(b []byte) string { return hex.EncodeToString(b) }

func TestFormats(t *testing.T) {
	a, b, c, d := "evil one", "evil two", "evil three", "evil four"
	s2, s1, m, s4 := sha256.Sum256([]byte(a)), sha1.Sum([]byte(b)), md5.Sum([]byte(c)), sha256.Sum256([]byte(d))
	text := fmt.Sprintf("# a feed\n%s:%d:Win.Evil.One:73\n%s:*:Evil.Two\n%s:%d:Evil Three\n\n%s  # plain\n", hexOf(s2[:]), len(a), hexOf(s1[:]), hexOf(m[:]), len(c), strings.ToUpper(hexOf(s4[:])))
	var l List
	if err := l.Read("feed.hsb", strings.NewReader(text)); err != nil {
		t.Fatal(err)
	}
	if l.Len() != 4 {
		t.Fatalf("%d hashes", l.Len())
	}
	for data, name := range map[string]string{a: "Win.Evil.One", b: "Evil.Two", c: "Evil Three", d: ""} {
		e, ok := l.Lookup(sums(data))
		if !ok || e.Name != name {
			t.Errorf("%q: %v %+v", data, ok, e)
		}
	}
	if _, ok := l.Lookup(sums("harmless")); ok {
		t.Error("an unlisted file found")
	}
	// The size must agree where the list gives one.
	s := sums(a)
	s.Size++
	if _, ok := l.Lookup(s); ok {
		t.Error("size ignored")
	}
	// An all-zero hash must not match an empty map's zero key.
	var empty List
	if _, ok := empty.Lookup(&Sums{}); ok {
		t.Error("empty list matched")
	}
}

func TestErrorsNameFileAndLine(t *testing.T) {
	text := "0123:1:x\nzz\n" + strings.Repeat("a", 64) + ":big:x\n" + strings.Repeat("a", 64) + " extra\n" + strings.Repeat("b", 64) + "\n"
	var l List
	err := l.Read("bad.hsb", strings.NewReader(text))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"bad.hsb:1: hash of 4 hex digits", "bad.hsb:2: hash \"zz\" is not hexadecimal", `bad.hsb:3: size "big"`, "bad.hsb:4: want HASH:SIZE:NAME"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}

// BenchmarkLoadMillion loads a feed of 1,000,000 SHA-256 hashes.
func BenchmarkLoadMillion(b *testing.B) {
	path := filepath.Join(b.TempDir(), "big.hsb")
	f, _ := os.Create(path)
	for i := 0; i < 1_000_000; i++ {
		s := sha256.Sum256([]byte(fmt.Sprint(i)))
		fmt.Fprintf(f, "%x:%d:Feed.%d\n", s, i, i)
	}
	f.Close()
	for b.Loop() {
		var l List
		if err := l.Load(path, 1<<30); err != nil {
			b.Fatal(err)
		}
		if e, ok := l.Lookup(&Sums{SHA256: sha256.Sum256([]byte("4242")), Size: 4242}); !ok || e.Name != "Feed.4242" || l.Len() != 1_000_000 {
			b.Fatal("not found")
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	var l List
	var text strings.Builder
	for i := 0; i < 100000; i++ {
		s := sha256.Sum256([]byte(fmt.Sprint(i)))
		fmt.Fprintf(&text, "%x:*:x\n", s)
	}
	l.Read("x", strings.NewReader(text.String()))
	s := sums("not listed")
	b.ReportAllocs()
	for b.Loop() {
		l.Lookup(s)
	}
}

func FuzzRead(f *testing.F) {
	f.Add("44d88612fea8a8f36de82e1278abb02f:68:Eicar\n")
	f.Add(strings.Repeat("a", 64) + ":*:x:73\n# c\n" + strings.Repeat("b", 40) + "\n")
	f.Add("::::\n\x00\xff")
	f.Fuzz(func(t *testing.T, text string) {
		var l List
		if err := l.Read("f", strings.NewReader(text)); err == nil {
			l.Lookup(&Sums{})
		} else if !strings.HasPrefix(err.Error(), "f:") {
			t.Fatalf("error without file: %v", err)
		}
	})
}
