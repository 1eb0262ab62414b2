package sigmine

import (
	"fmt"
	"io"
	"strings"
	"time"

	"mailguard/internal/matcher"
	"mailguard/internal/sigfile"
)

// Write prints the result in the signature-file format, best first, each
// signature preceded by a comment with its evidence.
func (r *Result) Write(w io.Writer, name string) {
	fmt.Fprintf(w, "# mailguard sigmine: %d samples (%s), %d clean messages checked (%s), in %s.\n",
		r.Samples, perPath(r.SamplePaths), r.CleanMessages, perPath(r.CleanPaths), r.Elapsed.Round(time.Millisecond))
	if r.CleanMessages == 0 {
		fmt.Fprintf(w, "# UNPROVEN: no clean mail was checked; these may match legitimate mail. Each occurs in at least %d samples.\n", r.MinSamples)
	} else {
		fmt.Fprintf(w, "# Each signature occurs in at least %d samples and in no clean message.\n", r.MinSamples)
	}
	covering := 0
	for _, s := range r.Signatures {
		if s.Covers {
			covering++
		}
	}
	matched := r.Samples - len(r.Uncovered)
	switch {
	case covering == 0:
		fmt.Fprintln(w, "# No line qualified: none occurs in enough samples, is random enough, and is absent from the clean mail.")
	case covering == 1:
		fmt.Fprintf(w, "# The first signature matches %d of %d samples%s.\n", matched, r.Samples, r.cleanClaim())
	default:
		fmt.Fprintf(w, "# The first %d signatures together match %d of %d samples%s.\n", covering, matched, r.Samples, r.cleanClaim())
	}
	for i, s := range r.Signatures {
		kind := "whole line"
		if !s.Line {
			kind = "substring that survives re-wrapping"
		}
		extra := ""
		if !s.Covers {
			extra = ", alternative"
		}
		fmt.Fprintf(w, "\n# samples: %d/%d, clean: %d/%d, length: %d, entropy: %.2f bits/char, %s%s\n",
			s.Samples, r.Samples, s.Clean, r.CleanMessages, len(s.Pattern), s.Entropy, kind, extra)
		fmt.Fprintf(w, "%s.%d =\n%s\n", name, i+1, sigfile.FormatPattern(s.Pattern))
	}
	if len(r.Uncovered) > 0 {
		fmt.Fprintf(w, "\n# Not matched by any signature above (%d samples):\n", len(r.Uncovered))
		for _, u := range r.Uncovered {
			fmt.Fprintf(w, "#   %s: %s\n", u.File, u.Why)
		}
	}
}

// cleanClaim is the claim about clean mail, made only when it was checked.
func (r *Result) cleanClaim() string {
	if r.CleanMessages == 0 {
		return ""
	}
	return " and no clean message"
}

// perPath says how many files each path given held: "a: 10, b: 2,000".
func perPath(counts []PathCount) string {
	if len(counts) == 0 {
		return "none given"
	}
	parts := make([]string, len(counts))
	for i, c := range counts {
		parts[i] = fmt.Sprintf("%s: %d", c.Path, c.Files)
	}
	return strings.Join(parts, ", ")
}

// CheckResult is what Check found for each signature.
type CheckResult struct {
	Names          []string
	CleanHits      []int // clean messages each signature matches
	SampleHits     []int // samples each signature matches
	CleanMessages  int
	Samples        int
	SamplesMatched int // samples matched by at least one signature
	Errors         []error
}

// OK reports a file safe to load: no clean message matched, and every
// sample (if any were given) matched.
func (c *CheckResult) OK() bool {
	for _, n := range c.CleanHits {
		if n > 0 {
			return false
		}
	}
	return c.SamplesMatched == c.Samples && len(c.Errors) == 0
}

// Check proves a signature file: false positives per signature on the
// clean corpus, and coverage per signature on the samples.
func Check(sigs []sigfile.Signature, o Options) (*CheckResult, error) {
	o.defaults()
	m, err := matcher.New(sigfile.Patterns(sigs))
	if err != nil {
		return nil, err
	}
	res := &CheckResult{CleanHits: make([]int, len(sigs)), SampleHits: make([]int, len(sigs))}
	for _, s := range sigs {
		res.Names = append(res.Names, s.Name)
	}
	onErr := func(path string, err error) { res.Errors = append(res.Errors, fmt.Errorf("%s: %w", path, err)) }
	cleanFiles, cleanPaths := filesPerPath(o.Clean, onErr)
	sampleFiles, samplePaths := filesPerPath(o.Samples, onErr)
	if err := emptyPath("--clean", cleanPaths); err != nil {
		return nil, err
	}
	if err := emptyPath("--samples", samplePaths); err != nil {
		return nil, err
	}
	clean := &corpus{name: "clean messages", files: cleanFiles, maxBody: o.MaxBody}
	samples := &corpus{name: "samples", files: sampleFiles, maxBody: o.MaxBody}
	res.CleanMessages, res.Samples = len(clean.files), len(samples.files)
	if res.CleanMessages == 0 {
		// A check against no mail proves nothing: never say OK for it.
		return nil, fmt.Errorf("no clean messages found in %s: --check needs a corpus of clean mail", strings.Join(o.Clean, ", "))
	}
	var mu lockedCounts
	res.Errors = append(res.Errors, clean.each(o.Workers, o.Progress, func(_ int, body []byte) {
		mu.add(res.CleanHits, hitsIn(m, body), nil)
	})...)
	res.Errors = append(res.Errors, samples.each(o.Workers, o.Progress, func(_ int, body []byte) {
		mu.add(res.SampleHits, hitsIn(m, body), &res.SamplesMatched)
	})...)
	return res, nil
}

// Write prints a table, then the verdict.
func (c *CheckResult) Write(w io.Writer) {
	width := len("SIGNATURE")
	for _, n := range c.Names {
		width = max(width, len(n))
	}
	fmt.Fprintf(w, "%-*s  %12s  %s\n", width, "SIGNATURE", "CLEAN HITS", "SAMPLES")
	for i, n := range c.Names {
		mark := ""
		if c.CleanHits[i] > 0 {
			mark = "  <- matches clean mail: do not load"
		}
		fmt.Fprintf(w, "%-*s  %12d  %d/%d%s\n", width, n, c.CleanHits[i], c.SampleHits[i], c.Samples, mark)
	}
	for _, err := range c.Errors {
		fmt.Fprintf(w, "error: %v\n", err)
	}
	var bad []string
	for i, n := range c.CleanHits {
		if n > 0 {
			bad = append(bad, c.Names[i])
		}
	}
	switch {
	case len(bad) > 0:
		fmt.Fprintf(w, "FAIL: %s would refuse legitimate mail (%d clean messages checked)\n", strings.Join(bad, ", "), c.CleanMessages)
	case c.SamplesMatched < c.Samples:
		fmt.Fprintf(w, "FAIL: %d of %d samples matched by no signature\n", c.Samples-c.SamplesMatched, c.Samples)
	case len(c.Errors) > 0:
		fmt.Fprintln(w, "FAIL: some files could not be read")
	default:
		fmt.Fprintf(w, "OK: no clean message matched (%d checked); %d of %d samples matched\n", c.CleanMessages, c.SamplesMatched, c.Samples)
	}
}
