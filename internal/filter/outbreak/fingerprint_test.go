package outbreak

import (
	"math/rand/v2"
	"testing"

	"mailguard/internal/mimewalk"
)

func fingerprint(t testing.TB, name string, data []byte) *Attachment {
	t.Helper()
	var fp fingerprinter
	kinds := Kinds{}
	for _, k := range DefaultKinds {
		kinds[k] = true
	}
	fp.reset(kinds, &mimewalk.Part{Name: name})
	for len(data) > 0 { // in uneven pieces, as a walk hands them over
		n := min(len(data), 1000+len(data)%777)
		fp.Write(data[:n])
		data = data[n:]
	}
	return fp.finish()
}

func sharedValues(a, b *Attachment) int {
	n := 0
	for _, x := range a.Sketch {
		for _, y := range b.Sketch {
			if x == y {
				n++
			}
		}
	}
	return n
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Copies varied by a few random bytes keep sketchMatch of their sketch
// values; different files share none; a file that shares a sixth of its
// bytes with another (an embedded logo) stays under sketchMatch.
func TestSketchSurvivesSmallChanges(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := randomBytes(r, 20000)
	a := fingerprint(t, "w.pif", base)
	if len(a.Sketch) != sketchSize {
		t.Fatalf("sketch of %d values", len(a.Sketch))
	}
	matched := 0
	const copies = 500
	for i := 0; i < copies; i++ {
		v := append([]byte(nil), base...)
		for j := 0; j < 4; j++ {
			v[r.IntN(len(v))] = byte(r.Uint32())
		}
		b := fingerprint(t, "w.pif", v)
		if b.SHA256 == a.SHA256 {
			t.Fatal("a varied copy has the same SHA-256")
		}
		if sharedValues(a, b) >= sketchMatch {
			matched++
		}
	}
	if matched < copies*98/100 {
		t.Errorf("only %d of %d varied copies match", matched, copies)
	}
	logo := randomBytes(r, 4000)
	for i := 0; i < 200; i++ {
		other := fingerprint(t, "d.zip", randomBytes(r, 20000))
		if n := sharedValues(a, other); n > 0 {
			t.Fatalf("unrelated files share %d sketch values", n)
		}
		x := fingerprint(t, "x.zip", append(append(randomBytes(r, 10000), logo...), randomBytes(r, 10000)...))
		y := fingerprint(t, "y.zip", append(append(randomBytes(r, 10000), logo...), randomBytes(r, 10000)...))
		if n := sharedValues(x, y); n >= sketchMatch {
			t.Fatalf("two documents sharing a sixth of their bytes share %d sketch values", n)
		}
	}
}

func TestRiskyKinds(t *testing.T) {
	mz := append([]byte("MZ"), make([]byte, 2000)...)
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"a.pif", []byte("x"), KindPrograms},
		{"invoice.pdf", mz, KindPrograms}, // by content
		{"a.js", []byte("var x"), KindScripts},
		{"a.zip", []byte("PK\x03\x04"), KindArchives},
		{"photo.jpg", []byte("\xff\xd8\xff"), ""},
		{"", []byte("hello"), ""},
		{"a.ISO", []byte("x"), KindDiskImages},
		{"page.html", []byte("<html>"), KindHTML},
		{"old.doc", []byte("x"), KindMacroDocs},
		{"report.pdf", []byte("%PDF-1.4"), ""}, // pdf is not a default kind
	} {
		a := fingerprint(t, c.name, c.data)
		got := ""
		if a != nil {
			got = a.Kind
		}
		if got != c.want {
			t.Errorf("%q: kind %q, want %q", c.name, got, c.want)
		}
	}
}

// A part that carries a harmless name and a risky one (Content-Type's
// name and Content-Disposition's filename differ) is risky.
func TestEveryNameCounts(t *testing.T) {
	var fp fingerprinter
	fp.reset(Kinds{KindScripts: true}, &mimewalk.Part{Name: "notes.txt", Names: []string{"notes.txt", "run.js"}})
	fp.Write([]byte("var x = 1;"))
	if a := fp.finish(); a == nil || a.Kind != KindScripts {
		t.Fatalf("%+v", a)
	}
}

func TestKeyStrings(t *testing.T) {
	a := fingerprint(t, "w.exe", randomBytes(rand.New(rand.NewPCG(3, 4)), 5000))
	for _, k := range a.Keys() {
		back, err := ParseKey(k.String())
		if err != nil || back != k {
			t.Errorf("%s: %v %v", k, back, err)
		}
	}
	for _, bad := range []string{"", "c", "c123", "s" + string(make([]byte, 32)), "x0123456789abcdef", "c0123456789abcdeg", "../../etc/passwd"} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add("list\n")
	f.Add("release c0123456789abcdef\n")
	f.Add("release s0123456789abcdef0123456789abcdef")
	f.Add("release ../../etc/passwd\n")
	f.Fuzz(func(t *testing.T, line string) {
		req, err := ParseRequest(line)
		if err != nil {
			return
		}
		if req.Op == "release" {
			if _, err := ParseKey(req.ID); err != nil {
				t.Fatalf("release of a bad id %q accepted", req.ID)
			}
		}
	})
}

func FuzzFingerprint(f *testing.F) {
	f.Add("a.exe", []byte("MZ\x90\x00"))
	f.Add("", []byte("PK\x03\x04 zip"))
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		a := fingerprint(t, name, data)
		if a != nil && len(a.Sketch) > sketchSize {
			t.Fatalf("sketch of %d", len(a.Sketch))
		}
	})
}
