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

	// Asked for lines in every sample, sigmine says no single line
	// covers two variants, and which samples are left.
	res, out = mine(t, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}, MinCoverage: 1})
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

// An outbreak as it comes: three variants (different payloads) wrapped at
// different widths, and clean mail that includes warnings quoting the
// worm. With default flags the printed set rejects every copy in scan and
// no clean message.
func TestThreeVariantsByDefault(t *testing.T) {
	o := newOutbreak(t, 10, []int{76, 72, 64}, 301, 302, 303)
	first, _ := mine(t, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}})
	var warning strings.Builder
	warning.WriteString("Subject: FW: virus warning\r\n\r\nDo not open this! It looks like this:\r\n")
	for _, s := range first.Signatures[:1] {
		warning.WriteString("> " + string(s.Pattern) + "\r\n")
	}
	os.WriteFile(filepath.Join(o.clean, "warning.eml"), []byte(warning.String()), 0o644)
	res, out := mine(t, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}})
	if len(res.Uncovered) != 0 {
		t.Fatalf("default flags left samples uncovered:\n%s", out)
	}
	covering := 0
	for _, s := range res.Signatures {
		if s.Covers {
			covering++
			if s.Samples < res.MinSamples || strings.Contains(warning.String(), string(s.Pattern)) {
				t.Errorf("signature in %d samples, or quoted in clean mail:\n%s", s.Samples, s.Pattern)
			}
		}
	}
	if covering < 3 {
		t.Errorf("three variants covered by %d signatures:\n%s", covering, out)
	}
	if !strings.Contains(out, "30 samples ("+o.samples+": 30)") || !strings.Contains(out, "clean messages checked ("+o.clean+": 201)") {
		t.Errorf("the summary does not say what was read:\n%s", out)
	}
	assertRejectsExactlySamples(t, o, out)
}

// Every clean path is read: a clean message in the second one that holds
// a candidate line removes that candidate.
func TestSeveralCleanPaths(t *testing.T) {
	o := newOutbreak(t, 10, []int{76}, 77)
	first, _ := mine(t, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}})
	second := t.TempDir()
	quoted := string(first.Signatures[0].Pattern)
	os.WriteFile(filepath.Join(second, "quote.eml"), []byte("Subject: look\r\n\r\n"+quoted+"\r\n"), 0o644)
	res, out := mine(t, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean, second}})
	for _, s := range res.Signatures {
		if string(s.Pattern) == quoted {
			t.Fatalf("a line found in the second clean path was proposed:\n%s", out)
		}
	}
	if res.CleanMessages != 201 || !strings.Contains(out, second+": 1") {
		t.Fatalf("second clean path not read (%d messages):\n%s", res.CleanMessages, out)
	}
	empty := t.TempDir()
	if _, err := sigmine.Mine(sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean, empty}}); err == nil ||
		err.Error() != "--clean "+empty+": no messages found there" {
		t.Fatalf("a clean path with no messages: %v", err)
	}
	if _, err := sigmine.Mine(sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean, filepath.Join(second, "nothing")}}); err == nil ||
		err.Error() != "--clean "+filepath.Join(second, "nothing")+": no such file or directory" {
		t.Fatalf("a clean path that does not exist: %v", err)
	}
}

// A sample that shares no line with the others is reported, with the
// reason, and gets no signature of its own.
func TestOddSampleReported(t *testing.T) {
	o := newOutbreak(t, 10, []int{76}, 55)
	odd := filepath.Join(o.samples, "odd.eml")
	var msg strings.Builder
	msg.WriteString("Subject: odd\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 40; i++ {
		line := make([]byte, 57)
		for j := range line {
			line[j] = byte(rng.IntN(256))
		}
		msg.WriteString(base64.StdEncoding.EncodeToString(line) + "\r\n")
	}
	os.WriteFile(odd, []byte(msg.String()), 0o644)
	res, out := mine(t, sigmine.Options{Samples: []string{o.samples}, Clean: []string{o.clean}})
	if len(res.Uncovered) != 1 || res.Uncovered[0].File != odd || !strings.Contains(res.Uncovered[0].Why, "shares no line random enough with 2 other samples") {
		t.Fatalf("odd sample not reported as it should be: %+v\n%s", res.Uncovered, out)
	}
	for _, s := range res.Signatures {
		if s.Covers && s.Samples < 3 {
			t.Fatalf("a signature for fewer than 3 samples:\n%s", out)
		}
	}
	if !strings.Contains(out, odd+": shares no line") {
		t.Errorf("output does not name the odd sample and why:\n%s", out)
	}
}
