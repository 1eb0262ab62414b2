package sigmine

import (
	"bytes"
	"math"
	"math/bits"
)

// candidate is a pattern under consideration and what is known of it.
type candidate struct {
	pattern []byte
	line    bool   // a whole body line (else a substring of a base64 run)
	origin  int    // line number in its reference sample, to keep output varied
	covered bitset // samples containing it
	count   int    // len(covered)
	clean   int    // clean messages containing it
	entropy float64
}

func (c *candidate) score() float64 { return c.entropy * float64(len(c.pattern)) }

// quality holds the thresholds that make a line random enough to be a
// signature: an accidental match in legitimate mail must be negligible.
type quality struct {
	minLength  int
	minEntropy float64 // bits per character
	maxRun     int     // longest run of one repeated character
}

func (q quality) ok(p []byte) (float64, bool) {
	if len(p) < q.minLength || len(p) > maxPattern {
		return 0, false
	}
	if run := longestRun(p); run > q.maxRun {
		return 0, false
	}
	e := entropy(p)
	return e, e >= q.minEntropy
}

// maxPattern is the matcher's limit.
const maxPattern = 1000

// entropy is the Shannon entropy of p's characters, in bits per character.
func entropy(p []byte) float64 {
	var counts [256]int
	for _, c := range p {
		counts[c]++
	}
	e := 0.0
	n := float64(len(p))
	for _, c := range counts {
		if c > 0 {
			f := float64(c) / n
			e -= f * math.Log2(f)
		}
	}
	return e
}

func longestRun(p []byte) int {
	best, run := 0, 0
	for i := range p {
		if i > 0 && p[i] == p[i-1] {
			run++
		} else {
			run = 1
		}
		best = max(best, run)
	}
	return best
}

// structural reports MIME structure that differs per message or is shared
// by legitimate mail: part headers ("Content-Type: ...") and boundaries.
func structural(line []byte) bool {
	if bytes.HasPrefix(line, []byte("--")) {
		return true
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return false
	}
	for _, c := range line[:colon] {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return colon+1 < len(line) && (line[colon+1] == ' ' || line[colon+1] == '\t')
}

func isBase64Line(line []byte) bool {
	if len(line) == 0 {
		return false
	}
	for _, c := range line {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=') {
			return false
		}
	}
	return true
}

// extract returns the qualifying candidates of one body: its lines, and,
// where lines are base64, substrings of window bytes that survive a
// different line wrapping of the same attachment (any window that lies
// within one line here may lie within one line in a copy wrapped at
// another width, and the matcher decides whether it does).
func extract(body []byte, q quality, window int) []*candidate {
	var out []*candidate
	seen := map[string]bool{}
	add := func(p []byte, line bool, origin int) {
		if seen[string(p)] {
			return
		}
		e, ok := q.ok(p)
		if !ok {
			return
		}
		seen[string(p)] = true
		out = append(out, &candidate{pattern: append([]byte(nil), p...), line: line, origin: origin, entropy: e})
	}
	lineNo := 0
	for len(body) > 0 {
		var line []byte
		line, body, _ = bytes.Cut(body, []byte("\n"))
		line = bytes.TrimRight(line, "\r")
		lineNo++
		if structural(line) {
			continue
		}
		add(line, true, lineNo)
		if window > 0 && isBase64Line(line) && len(line) >= window {
			// Windows start on base64 quanta, so copies of a fixed
			// attachment produce the same windows.
			for p := 0; p+window <= len(line); p += 4 {
				add(line[p:p+window], false, lineNo)
			}
		}
	}
	return out
}

// bitset is a set of sample indices.
type bitset []uint64

func newBitset(n int) bitset    { return make(bitset, (n+63)/64) }
func (b bitset) set(i int)      { b[i/64] |= 1 << (i % 64) }
func (b bitset) has(i int) bool { return b[i/64]&(1<<(i%64)) != 0 }
func (b bitset) clear(other bitset) {
	for i := range b {
		b[i] &^= other[i]
	}
}

func (b bitset) countAnd(other bitset) int {
	n := 0
	for i := range b {
		n += bits.OnesCount64(b[i] & other[i])
	}
	return n
}

func (b bitset) first() int {
	for i, w := range b {
		if w != 0 {
			for j := 0; j < 64; j++ {
				if w&(1<<j) != 0 {
					return i*64 + j
				}
			}
		}
	}
	return -1
}
