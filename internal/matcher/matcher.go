// Package matcher finds any of many long literal byte patterns in a stream.
//
// Worm signatures are long, random-looking lines (typically 60–80 bytes), and
// a site may load thousands. Instead of walking every byte through an
// automaton, the matcher looks at the text only every `step` bytes: it takes
// the 8-byte gram found there and asks a small bitmap whether any pattern
// contains that gram at one of its first `step` offsets. Every occurrence of a
// pattern of length L covers a sampled position at an offset below step as
// long as step <= L-7, so nothing is missed, and the cost per byte falls as
// the shortest pattern grows: scanning cost does not depend on the number of
// patterns, only on how often the bitmap answers "maybe".
//
// All tables are flat and pointer-free, so a large signature set adds nothing
// to garbage-collection work.
package matcher

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

const (
	// MinPatternLen is the shortest pattern accepted. Shorter patterns would
	// both slow every scan down and match legitimate mail by accident.
	MinPatternLen = 16
	// MaxPatternLen is the longest pattern accepted: an SMTP line is at most
	// 1000 bytes with its CRLF, and a scanner carries len-1 bytes from one
	// chunk to the next.
	MaxPatternLen = 1000

	gramLen = 8
	maxStep = 64
	// hashMul is the 64-bit golden-ratio constant used for multiplicative
	// hashing of grams.
	hashMul = 0x9E3779B97F4A7C15
)

// Pattern is one named byte string to look for.
type Pattern struct {
	Name  string
	Bytes []byte
}

// entry says: pattern pat has gram at offset off.
type entry struct {
	gram uint64
	pat  uint32
	off  uint32
}

// Matcher is an immutable index over a set of patterns. It is safe for
// concurrent use; each stream needs its own Scanner.
type Matcher struct {
	step     int
	minLen   int
	maxLen   int
	filter   []uint64 // blocked filter: a word per hash prefix, two bits per gram
	fShift   uint     // 64 - log2(len(filter))
	bShift   uint     // 64 - bucketBits
	buckets  []uint32 // CSR offsets into entries, len 2^bucketBits + 1
	entries  []entry
	data     []byte   // all patterns, back to back
	starts   []uint32 // pattern i is data[starts[i]:starts[i+1]]
	names    []string
	patCount int
}

// New builds a matcher. It fails if a pattern is shorter than MinPatternLen
// or longer than MaxPatternLen. An empty set gives a matcher that never
// matches.
func New(patterns []Pattern) (*Matcher, error) {
	m := &Matcher{patCount: len(patterns), starts: make([]uint32, 1, len(patterns)+1)}
	if len(patterns) == 0 {
		return m, nil
	}
	m.minLen = MaxPatternLen
	total := 0
	for i, p := range patterns {
		n := len(p.Bytes)
		if n < MinPatternLen {
			return nil, fmt.Errorf("pattern %d (%s): %d bytes, shorter than the minimum of %d", i, p.Name, n, MinPatternLen)
		}
		if n > MaxPatternLen {
			return nil, fmt.Errorf("pattern %d (%s): %d bytes, longer than the maximum of %d", i, p.Name, n, MaxPatternLen)
		}
		m.minLen = min(m.minLen, n)
		m.maxLen = max(m.maxLen, n)
		total += n
	}
	m.step = min(m.minLen-gramLen+1, maxStep)
	m.data = make([]byte, 0, total)
	m.names = make([]string, len(patterns))
	for i, p := range patterns {
		m.data = append(m.data, p.Bytes...)
		m.starts = append(m.starts, uint32(len(m.data)))
		m.names[i] = p.Name
	}

	nEntries := len(patterns) * m.step
	// About 8 filter bits per entry, two of them set per gram in the same
	// 64-bit word (one cache line per probe), keeps false "maybe"s near 5%
	// while the filter (512 KiB for 10,000 signatures) mostly stays in
	// cache between messages; measured against 16 bits per entry, the
	// smaller filter costs less in the daemon, where the MTA's work shares
	// the caches.
	filterBits := clamp(bits.Len(uint(nEntries*8-1)), 16, 24)
	// A bucket per filter word: the bucket index stays small enough to be
	// cached, and a word's few entries sit together, so a false "maybe"
	// costs about one cache miss.
	bucketBits := filterBits - 6
	m.fShift = uint(64 - (filterBits - 6))
	m.bShift = uint(64 - bucketBits)
	m.filter = make([]uint64, 1<<(filterBits-6))
	m.buckets = make([]uint32, (1<<bucketBits)+1)

	// Counting sort of entries into buckets.
	for i := range patterns {
		p := m.pattern(i)
		for off := 0; off < m.step; off++ {
			h := hash(load(p, off))
			m.filter[h>>m.fShift] |= filterMask(h)
			m.buckets[(h>>m.bShift)+1]++
		}
	}
	for b := 1; b < len(m.buckets); b++ {
		m.buckets[b] += m.buckets[b-1]
	}
	m.entries = make([]entry, nEntries)
	fill := make([]uint32, len(m.buckets)-1)
	copy(fill, m.buckets)
	for i := range patterns {
		p := m.pattern(i)
		for off := 0; off < m.step; off++ {
			g := load(p, off)
			b := hash(g) >> m.bShift
			m.entries[fill[b]] = entry{gram: g, pat: uint32(i), off: uint32(off)}
			fill[b]++
		}
	}
	return m, nil
}

func clamp(v, lo, hi int) int { return max(lo, min(v, hi)) }

func load(b []byte, i int) uint64 { return binary.LittleEndian.Uint64(b[i:]) }

// hash is the gram's multiplicative hash: its top bits choose the filter
// word and the bucket, two middle 6-bit fields the bits within the word.
func hash(g uint64) uint64 { return g * hashMul }

func filterMask(h uint64) uint64 { return 1<<((h>>20)&63) | 1<<((h>>26)&63) }

func (m *Matcher) pattern(i int) []byte { return m.data[m.starts[i]:m.starts[i+1]] }

// Len is the number of patterns.
func (m *Matcher) Len() int { return m.patCount }

// Name returns the name of pattern i.
func (m *Matcher) Name(i int) string { return m.names[i] }

// Find returns the index of a pattern that occurs in text, or -1.
func (m *Matcher) Find(text []byte) int {
	found := -1
	m.FindEach(text, func(p int) bool {
		found = p
		return false
	})
	return found
}

// FindEach calls fn with the index of every pattern that occurs in text,
// once per occurrence, in no particular order, until fn returns false.
// Every occurrence covers exactly one sampled position at one of the
// indexed offsets, so none is missed or reported twice.
func (m *Matcher) FindEach(text []byte, fn func(p int) bool) {
	if m.patCount == 0 || len(text) < m.minLen {
		return
	}
	step, filter, shift := m.step, m.filter, m.fShift
	last := len(text) - gramLen
	for i := 0; i <= last; i += step {
		g := binary.LittleEndian.Uint64(text[i:])
		h := g * hashMul
		mask := filterMask(h)
		if filter[h>>shift]&mask != mask {
			continue
		}
		b := h >> m.bShift
		for _, e := range m.entries[m.buckets[b]:m.buckets[b+1]] {
			if e.gram != g {
				continue
			}
			start := i - int(e.off)
			p := m.pattern(int(e.pat))
			if start >= 0 && start+len(p) <= len(text) && string(text[start:start+len(p)]) == string(p) {
				if !fn(int(e.pat)) {
					return
				}
			}
		}
	}
}
