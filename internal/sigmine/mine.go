// Package sigmine turns a handful of captured copies of one worm into
// signatures: lines (or re-wrap-proof substrings) of the raw message body
// that occur in the samples, never in a corpus of clean mail, and are random
// enough that an accidental match is negligible. It also proves an existing
// signature file against clean mail and samples.
//
// Candidates are judged with the same matcher the virus filter uses, as
// substrings of the body as the MTA passes it, so what sigmine proves is
// what the daemon will do.
package sigmine

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"sync"
	"time"

	"mailguard/internal/matcher"
	"mailguard/internal/scan"
)

// Options tune mining. Zero values take the defaults in Defaults.
type Options struct {
	Samples, Clean []string // files, directories, Maildirs
	// MinCoverage is the fraction of the samples each signature must occur
	// in; 0 (the default) finds the smallest set of signatures that
	// covers every sample it can, each in at least MinSamples samples.
	MinCoverage float64
	// MinSamples is the fewest samples a signature may cover (fewer when
	// there are fewer samples), so one odd sample gets no signature of
	// its own.
	MinSamples int
	MinLength  int
	MinEntropy float64 // bits per character
	MaxRun     int
	Window     int // length of re-wrap-proof substrings; negative turns them off
	Max        int // signatures to print at most
	MaxBody    int // bytes; larger messages are skipped with an error
	Workers    int
	Progress   io.Writer // nil: quiet
}

// Defaults are the documented thresholds.
var Defaults = Options{MinSamples: 3, MinLength: 40, MinEntropy: 4.5, MaxRun: 4, Window: 60, Max: 5, MaxBody: 64 << 20, Workers: 2}

// maxCover bounds the covering set: a "worm" that needs more signatures
// than this is not one worm.
const maxCover = 100

// Signature is one mined signature with its evidence.
type Signature struct {
	Pattern []byte
	Line    bool // a whole line (else a substring that survives re-wrapping)
	Samples int  // samples containing it
	Clean   int  // clean messages containing it (always 0 when printed)
	Entropy float64
	Covers  bool // part of the set that covers the samples
}

// Result is what Mine found.
type Result struct {
	Samples, CleanMessages int
	// SamplePaths and CleanPaths say how many files each path given held.
	SamplePaths, CleanPaths []PathCount
	Signatures              []Signature
	Uncovered               []Uncovered // samples no printed signature matches
	Errors                  []error     // files that could not be read
	MinSamples              int         // the fewest samples a signature covers
	Elapsed                 time.Duration
}

// PathCount is a path given on the command line and the files read from it.
type PathCount struct {
	Path  string
	Files int
}

// Uncovered is a sample no signature matches, and why.
type Uncovered struct {
	File, Why string
}

func (o *Options) defaults() {
	d := Defaults
	if o.MinCoverage < 0 || o.MinCoverage > 1 {
		o.MinCoverage = 0
	}
	if o.MinSamples <= 0 {
		o.MinSamples = d.MinSamples
	}
	if o.MinLength < matcher.MinPatternLen {
		o.MinLength = d.MinLength
	}
	if o.MinEntropy == 0 {
		o.MinEntropy = d.MinEntropy
	}
	if o.MaxRun == 0 {
		o.MaxRun = d.MaxRun
	}
	if o.Window == 0 {
		o.Window = d.Window
	}
	if o.Max <= 0 {
		o.Max = d.Max
	}
	if o.MaxBody <= 0 {
		o.MaxBody = d.MaxBody
	}
	if o.Workers <= 0 {
		o.Workers = d.Workers
	}
}

// Mine finds signatures for the samples.
func Mine(o Options) (*Result, error) {
	o.defaults()
	start := time.Now()
	res := &Result{}
	defer func() { res.Elapsed = time.Since(start) }()
	onErr := func(path string, err error) { res.Errors = append(res.Errors, fmt.Errorf("%s: %w", path, err)) }
	var sampleFiles, cleanFiles []string
	sampleFiles, res.SamplePaths = filesPerPath(o.Samples, onErr)
	cleanFiles, res.CleanPaths = filesPerPath(o.Clean, onErr)
	samples := &corpus{name: "samples", files: sampleFiles, maxBody: o.MaxBody}
	clean := &corpus{name: "clean messages", files: cleanFiles, maxBody: o.MaxBody}
	res.Samples, res.CleanMessages = len(samples.files), len(clean.files)
	if err := emptyPath("--samples", res.SamplePaths); err != nil {
		return nil, err
	}
	if err := emptyPath("--clean", res.CleanPaths); err != nil {
		return nil, err
	}
	if len(samples.files) == 0 {
		return nil, errors.New("no samples")
	}
	q := quality{minLength: o.MinLength, minEntropy: o.MinEntropy, maxRun: o.MaxRun}
	n := len(samples.files)
	need := max(min(o.MinSamples, n), int(math.Ceil(o.MinCoverage*float64(n))))
	res.MinSamples = need
	status := map[string]*candidate{} // every pattern judged, by its bytes
	why := map[int]string{}           // samples given up on, and why

	uncovered := newBitset(len(samples.files))
	for i := range samples.files {
		uncovered.set(i)
	}
	hopeless := newBitset(len(samples.files)) // references that yielded nothing
	var pool []*candidate
	seen := map[string]bool{}
	var chosen []*candidate
	for len(chosen) < maxCover {
		ref := firstOf(uncovered, hopeless)
		if ref < 0 {
			break
		}
		body, err := samples.read(ref)
		if err != nil {
			hopeless.set(ref)
			why[ref] = "unreadable: " + err.Error()
			continue
		}
		var fresh, mine []*candidate
		for _, c := range extract(body, q, o.Window) {
			c.origin += ref << 32 // line numbers are per reference sample
			if old := status[string(c.pattern)]; old != nil {
				mine = append(mine, old)
				continue
			}
			if !seen[string(c.pattern)] {
				seen[string(c.pattern)] = true
				status[string(c.pattern)] = c
				fresh = append(fresh, c)
				mine = append(mine, c)
			}
		}
		proven, errs := evaluate(fresh, samples, clean, need, o)
		res.Errors = append(res.Errors, errs...)
		pool = append(pool, proven...)
		best := bestFor(pool, uncovered, chosen, ref)
		if best == nil {
			hopeless.set(ref)
			why[ref] = reason(mine, need)
			continue
		}
		chosen = append(chosen, best)
		uncovered.clear(best.covered)
	}
	for _, c := range chosen {
		res.Signatures = append(res.Signatures, signature(c, true))
	}
	for _, c := range alternatives(pool, chosen, o.Max-len(chosen)) {
		res.Signatures = append(res.Signatures, signature(c, false))
	}
	for i, f := range samples.files {
		if uncovered.has(i) {
			w := why[i]
			if w == "" {
				w = fmt.Sprintf("more than %d signatures would be needed", maxCover)
			}
			res.Uncovered = append(res.Uncovered, Uncovered{File: f, Why: w})
		}
	}
	return res, nil
}

// reason says why a sample's own candidates gave it no signature.
func reason(cands []*candidate, need int) string {
	if len(cands) == 0 {
		return "no line long and random enough to be a signature"
	}
	inEnough, inClean := 0, 0
	for _, c := range cands {
		if c.count >= need {
			inEnough++
			if c.clean > 0 {
				inClean++
			}
		}
	}
	switch {
	case inEnough == 0:
		return fmt.Sprintf("shares no line random enough with %d other samples", need-1)
	case inClean == inEnough:
		return "every candidate line also occurs in clean mail"
	}
	return "its candidates cover no sample still uncovered"
}

// filesPerPath lists the files of each path and counts them per path.
func filesPerPath(paths []string, onErr func(string, error)) ([]string, []PathCount) {
	var files []string
	var counts []PathCount
	for _, p := range paths {
		f := scan.Files([]string{p}, onErr)
		files = append(files, f...)
		counts = append(counts, PathCount{Path: p, Files: len(f)})
	}
	return files, counts
}

// emptyPath refuses a path that held no message: a typo or an empty
// folder must not pass for a corpus.
func emptyPath(flag string, counts []PathCount) error {
	for _, c := range counts {
		if c.Files > 0 {
			continue
		}
		if _, err := os.Stat(c.Path); err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return fmt.Errorf("%s %s: %v", flag, c.Path, err)
		}
		return fmt.Errorf("%s %s: no messages found there", flag, c.Path)
	}
	return nil
}

func firstOf(set, except bitset) int {
	rest := append(bitset(nil), set...)
	rest.clear(except)
	return rest.first()
}

func signature(c *candidate, covers bool) Signature {
	return Signature{Pattern: c.pattern, Line: c.line, Samples: c.count, Clean: c.clean, Entropy: c.entropy, Covers: covers}
}

// evaluate finds which samples and clean messages contain each candidate,
// keeping those in at least need samples and no clean message.
func evaluate(cands []*candidate, samples, clean *corpus, need int, o Options) ([]*candidate, []error) {
	if len(cands) == 0 {
		return nil, nil
	}
	m := build(cands)
	for _, c := range cands {
		c.covered = newBitset(len(samples.files))
	}
	var mu sync.Mutex
	errs := samples.each(o.Workers, o.Progress, func(i int, body []byte) {
		hits := hitsIn(m, body)
		mu.Lock()
		for _, p := range hits {
			cands[p].covered.set(i)
		}
		mu.Unlock()
	})
	var kept []*candidate
	for _, c := range cands {
		c.count = c.covered.countAnd(c.covered) // its size
		if c.count >= need {
			kept = append(kept, c)
		}
	}
	if len(kept) == 0 {
		return nil, errs
	}
	m = build(kept)
	errs = append(errs, clean.each(o.Workers, o.Progress, func(_ int, body []byte) {
		hits := hitsIn(m, body)
		mu.Lock()
		for _, p := range hits {
			kept[p].clean++
		}
		mu.Unlock()
	})...)
	var proven []*candidate
	for _, c := range kept {
		if c.clean == 0 {
			proven = append(proven, c)
		}
	}
	return proven, errs
}

func build(cands []*candidate) *matcher.Matcher {
	ps := make([]matcher.Pattern, len(cands))
	for i, c := range cands {
		ps[i] = matcher.Pattern{Bytes: c.pattern}
	}
	m, err := matcher.New(ps)
	if err != nil {
		panic(err) // extract keeps lengths within the matcher's limits
	}
	return m
}

// hitsIn lists the candidates found in body, each once.
func hitsIn(m *matcher.Matcher, body []byte) []int {
	var hits []int
	seen := map[int]bool{}
	m.FindEach(body, func(p int) bool {
		if !seen[p] {
			seen[p] = true
			hits = append(hits, p)
		}
		return true
	})
	return hits
}

// better orders candidates: more samples, whole lines before substrings,
// then more information (entropy times length).
func better(a, b *candidate, uncovered bitset) bool {
	ca, cb := a.covered.countAnd(uncovered), b.covered.countAnd(uncovered)
	if ca != cb {
		return ca > cb
	}
	if a.line != b.line {
		return a.line
	}
	return a.score() > b.score()
}

// bestFor is the greedy set-cover step: the candidate covering most of the
// samples still uncovered, among those that cover the reference sample
// ref (so each step makes progress on the sample being looked at).
func bestFor(pool []*candidate, uncovered bitset, chosen []*candidate, ref int) *candidate {
	var best *candidate
	for _, c := range pool {
		if !c.covered.has(ref) || contains(chosen, c) {
			continue
		}
		if best == nil || better(c, best, uncovered) {
			best = c
		}
	}
	return best
}

func contains(list []*candidate, c *candidate) bool {
	for _, x := range list {
		if x == c {
			return true
		}
	}
	return false
}

// alternatives are further proven candidates, best first, one per source
// line, for a postmaster who wants more than the covering set.
func alternatives(pool, chosen []*candidate, n int) []*candidate {
	sorted := append([]*candidate(nil), pool...)
	sort.SliceStable(sorted, func(i, j int) bool {
		a, b := sorted[i], sorted[j]
		if a.count != b.count {
			return a.count > b.count
		}
		if a.line != b.line {
			return a.line
		}
		return a.score() > b.score()
	})
	used := map[int]bool{}
	for _, c := range chosen {
		used[c.origin] = true
	}
	var out []*candidate
	for _, c := range sorted {
		if len(out) >= n {
			break
		}
		if contains(chosen, c) || used[c.origin] {
			continue
		}
		used[c.origin] = true
		out = append(out, c)
	}
	return out
}
