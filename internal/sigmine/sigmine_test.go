package sigmine_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailguard/internal/filter/virus"
	"mailguard/internal/loadgen"
	"mailguard/internal/pipeline"
	"mailguard/internal/scan"
	"mailguard/internal/sigfile"
	"mailguard/internal/sigmine"
	"mailguard/internal/verdict"
)

type outbreak struct {
	samples, clean string
}

// newOutbreak writes worm copies (widths in turn) and a clean corpus of
// generated mail with base64 attachments and plain-text messages.
func newOutbreak(t *testing.T, copies int, widths []int, payloads ...uint64) outbreak {
	t.Helper()
	root := t.TempDir()
	o := outbreak{samples: filepath.Join(root, "samples"), clean: filepath.Join(root, "clean")}
	for i, p := range payloads {
		err := loadgen.GenerateWorm(loadgen.WormOptions{Dir: o.samples, Count: copies, Payload: p, Widths: widths, Seed: uint64(i + 1), Prefix: fmt.Sprintf("v%d-", i)})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := loadgen.Generate(loadgen.GenerateOptions{Dir: o.clean, Count: 150, Size: 20000, Seed: 5}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		text := fmt.Sprintf("Subject: minutes %d\r\n\r\nDear all,\r\nthe minutes of meeting %d are below.\r\n%s\r\n", i, i, strings.Repeat("Agreed: the budget stands as proposed for the next year.\r\n", 20))
		os.WriteFile(filepath.Join(o.clean, fmt.Sprintf("text%03d.eml", i)), []byte(text), 0o644)
	}
	return o
}

func mine(t *testing.T, o sigmine.Options) (*sigmine.Result, string) {
	t.Helper()
	res, err := sigmine.Mine(o)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res.Write(&out, "WORM_TEST")
	if len(res.Errors) > 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	return res, out.String()
}

// scanWith runs `scan` with the mined signatures over the corpus and
// returns the files it would reject.
func scanWith(t *testing.T, sigText string, paths ...string) map[string]bool {
	t.Helper()
	sigs, err := sigfile.Parse("mined", strings.NewReader(sigText))
	if err != nil {
		t.Fatalf("mined output is not a valid signature file: %v\n%s", err, sigText)
	}
	f, err := virus.New(sigs, virus.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := pipeline.New(pipeline.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now}, pipeline.Member{Filter: f})
	rejected := map[string]bool{}
	for _, file := range scan.Files(paths, func(p string, err error) { t.Fatal(err) }) {
		fh, _ := os.Open(file)
		v, err := scan.Message(p, fh)
		fh.Close()
		if err != nil {
			t.Fatal(err)
		}
		if v.Verdict.Action == verdict.Reject {
			rejected[file] = true
		}
	}
	return rejected
}

func assertRejectsExactlySamples(t *testing.T, o outbreak, sigText string) {
	t.Helper()
	rejected := scanWith(t, sigText, o.samples, o.clean)
	samples := scan.Files([]string{o.samples}, nil)
	for _, s := range samples {
		if !rejected[s] {
			t.Errorf("sample %s not rejected", s)
		}
	}
	if len(rejected) != len(samples) {
		t.Errorf("%d files rejected, want the %d samples only", len(rejected), len(samples))
	}
}

func TestOutbreakWithRewrapping(t *testing.T) {
	o := newOutbreak(t, 30, []int{76, 76, 72}, 42)
	res, out := mine(t, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}})
	if len(res.Uncovered) != 0 || len(res.Signatures) == 0 || !res.Signatures[0].Covers || res.Signatures[0].Samples != 30 || res.Signatures[0].Clean != 0 {
		t.Fatalf("no signature covering all samples:\n%s", out)
	}
	if res.Signatures[0].Line {
		t.Errorf("with copies wrapped at 76 and 72, the first signature should be a re-wrap-proof substring:\n%s", out)
	}
	assertRejectsExactlySamples(t, o, out)
}

func TestOutbreakSameWrapping(t *testing.T) {
	o := newOutbreak(t, 20, []int{76}, 7)
	res, out := mine(t, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}})
	if len(res.Signatures) == 0 || !res.Signatures[0].Line || res.Signatures[0].Samples != 20 {
		t.Fatalf("want a whole line first:\n%s", out)
	}
	if len(res.Signatures) < 2 {
		t.Errorf("want alternatives too:\n%s", out)
	}
	assertRejectsExactlySamples(t, o, out)
}

func TestTwoVariants(t *testing.T) {
	o := newOutbreak(t, 12, []int{76}, 100, 200)
	res, out := mine(t, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}, MinCoverage: 0.4})
	covering := 0
	for _, s := range res.Signatures {
		if s.Covers {
			covering++
		}
	}
	if covering != 2 || len(res.Uncovered) != 0 {
		t.Fatalf("want a set of 2 covering both variants:\n%s", out)
	}
	assertRejectsExactlySamples(t, o, out)

	// At the default coverage (every sample), no single line covers two
	// variants: sigmine says so, and which samples are left.
	res, out = mine(t, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}})
	if len(res.Uncovered) == 0 {
		t.Fatalf("one line cannot cover two variants:\n%s", out)
	}
}

// TestAdversarialClean: clean mail quoting the worm (a forwarded warning)
// rules out the quoted lines.
func TestAdversarialClean(t *testing.T) {
	o := newOutbreak(t, 20, []int{76}, 9)
	first, out := mine(t, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}, Max: 3})
	var warning strings.Builder
	warning.WriteString("Subject: FW: virus warning\r\n\r\nDo not open this attachment! It looks like this:\r\n")
	for _, s := range first.Signatures {
		warning.WriteString("> " + string(s.Pattern) + "\r\n")
	}
	os.WriteFile(filepath.Join(o.clean, "warning.eml"), []byte(warning.String()), 0o644)

	res, out2 := mine(t, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}, Max: 3})
	for _, s := range res.Signatures {
		if strings.Contains(warning.String(), string(s.Pattern)) {
			t.Fatalf("a line quoted in clean mail was proposed: %s\nfirst run:\n%s\nsecond:\n%s", s.Pattern, out, out2)
		}
	}
	if len(res.Uncovered) != 0 {
		t.Fatalf("other lines should still cover the samples:\n%s", out2)
	}
	assertRejectsExactlySamples(t, o, out2)
}

func TestCheck(t *testing.T) {
	o := newOutbreak(t, 10, []int{76}, 11)
	_, out := mine(t, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}, Max: 1})
	good, _ := sigfile.Parse("mined", strings.NewReader(out))
	res, err := sigmine.Check(good, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}})
	if err != nil || !res.OK() || res.SamplesMatched != 10 {
		t.Fatalf("good file: %+v %v", res, err)
	}
	// A signature that matches clean mail is caught.
	bad := append(good, sigfile.Signature{Name: "TOO_COMMON", Pattern: []byte("Agreed: the budget stands as proposed")})
	res, _ = sigmine.Check(bad, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}})
	var text bytes.Buffer
	res.Write(&text)
	if res.OK() || res.CleanHits[1] != 50 || !strings.Contains(text.String(), "FAIL: TOO_COMMON would refuse legitimate mail") {
		t.Fatalf("false positive not caught:\n%s", text.String())
	}
}

func TestQualityThresholds(t *testing.T) {
	// Lines common to all samples but not random (a fixed text line, a
	// run of "A"s) are never proposed, however well they cover.
	root := t.TempDir()
	r := rand.New(rand.NewPCG(1, 1))
	for i := 0; i < 10; i++ {
		junk := make([]byte, 300)
		for j := range junk {
			junk[j] = byte(r.Uint32())
		}
		body := "Subject: x\r\n\r\nThis line is the same in every copy of the message here.\r\n" +
			strings.Repeat("A", 76) + "\r\n" + base64.StdEncoding.EncodeToString(junk) + "\r\n"
		os.WriteFile(filepath.Join(root, fmt.Sprintf("m%d", i)), []byte(body), 0o644)
	}
	res, out := mine(t, sigmine.Options{Samples: []string{root}})
	if len(res.Signatures) != 0 {
		t.Fatalf("low-entropy lines proposed:\n%s", out)
	}
}
