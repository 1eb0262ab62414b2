package outbreak

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"path"
	"strings"

	"mailguard/internal/mimewalk"
)

// Fingerprints of one attachment. A worm varies a few bytes per copy (a
// counter, padding, a random tail), so its SHA-256 differs in every copy.
// What stays is most of its content. The decoded bytes are cut into
// content-defined chunks (a rolling "gear" hash picks the cut points from
// the bytes themselves, so a change moves no cut point beyond the chunk
// or two it falls in) and each chunk is hashed; the sketchSize smallest
// chunk hashes are the attachment's fuzzy fingerprints (a bottom-k
// sketch, the MinHash idea that rspamd's shingles also rest on, over
// chunks of bytes instead of words). Two copies that differ in a few
// chunks share most of their smallest hashes: a changed chunk's new hash
// is random and lands among the smallest only as often as any chunk. An
// attachment matches a fingerprint set when at least sketchMatch of its
// sketch values do, so one chunk shared with an unrelated file (an
// embedded font, a zip's directory entry) is never enough.
const (
	sketchSize  = 6
	sketchMatch = 4
	// Chunk sizes: at least minChunk bytes, on average minChunk plus
	// 128 (the gear mask's 7 bits), at most maxChunk.
	minChunk  = 32
	maxChunk  = 1024
	chunkMask = 1<<7 - 1
	// fuzzyBytes bounds the bytes of one attachment that are chunked:
	// worms are small, and a huge file costs no more than this.
	fuzzyBytes = 8 << 20
	// minFuzzySize: below it an attachment has too few chunks for a
	// sketch to mean more than its SHA-256; only the SHA-256 counts.
	minFuzzySize = 512
)

// Key is one fingerprint as counted: the first 16 bytes of a SHA-256, or
// a chunk sketch value tagged as one.
type Key [16]byte

var chunkTag = [8]byte{'c', 'h', 'u', 'n', 'k', '-', 'v', '1'}

func shaKey(sum [32]byte) Key {
	var k Key
	copy(k[:], sum[:16])
	return k
}

func chunkKey(v uint64) Key {
	var k Key
	binary.BigEndian.PutUint64(k[:8], v)
	copy(k[8:], chunkTag[:])
	return k
}

// Fuzzy reports a chunk sketch value (not a SHA-256).
func (k Key) Fuzzy() bool { return [8]byte(k[8:]) == chunkTag }

// String is the key as list and release show it: "c" and 16 hex digits
// for a chunk value, "s" and 32 for a SHA-256's first half.
func (k Key) String() string {
	if k.Fuzzy() {
		return "c" + hex.EncodeToString(k[:8])
	}
	return "s" + hex.EncodeToString(k[:])
}

// ParseKey reads a key as String writes it.
func ParseKey(s string) (Key, error) {
	var k Key
	bad := fmt.Errorf("%q is not a fingerprint id (c and 16 hex digits, or s and 32)", clipID(s))
	switch {
	case len(s) == 17 && s[0] == 'c':
		if _, err := hex.Decode(k[:8], []byte(s[1:])); err != nil {
			return k, bad
		}
		copy(k[8:], chunkTag[:])
	case len(s) == 33 && s[0] == 's':
		if _, err := hex.Decode(k[:], []byte(s[1:])); err != nil {
			return k, bad
		}
		if k.Fuzzy() {
			return k, bad
		}
	default:
		return k, bad
	}
	return k, nil
}

func clipID(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// gear is the rolling hash's byte table, fixed so that every host (and
// every version) cuts the same chunks.
var gear = func() (t [256]uint64) {
	x := uint64(0x9E3779B97F4A7C15)
	for i := range t {
		x += 0x9E3779B97F4A7C15
		z := x
		z = (z ^ z>>30) * 0xBF58476D1CE4E5B9
		z = (z ^ z>>27) * 0x94D049BB133111EB
		t[i] = z ^ z>>31
	}
	return t
}()

// Attachment is what the filter knows of one risky attachment.
type Attachment struct {
	Name   string
	Kind   string // what made it risky: "program", "archive", ...
	Size   int64
	SHA256 [32]byte
	Sketch []uint64 // sorted, at most sketchSize
}

// Keys lists the attachment's fingerprints: its SHA-256 first, then its
// sketch.
func (a *Attachment) Keys() []Key {
	keys := make([]Key, 0, 1+len(a.Sketch))
	keys = append(keys, shaKey(a.SHA256))
	for _, v := range a.Sketch {
		keys = append(keys, chunkKey(v))
	}
	return keys
}

// fingerprinter takes one leaf's decoded bytes. Until it knows whether
// the part is risky (its name or type may say so at once; else its first
// bytes) it keeps the head; a part that is not risky costs nothing more.
type fingerprinter struct {
	kinds   Kinds
	part    *mimewalk.Part
	risk    string // "" undecided or not risky
	decided bool
	head    []byte
	sha     hash.Hash
	size    int64
	// chunking state
	roll, fnv uint64
	chunkLen  int
	chunked   int64
	sketch    [sketchSize]uint64
	n         int
}

const sniffLen = 512

func (f *fingerprinter) reset(kinds Kinds, p *mimewalk.Part) {
	sha := f.sha
	head := f.head[:0]
	*f = fingerprinter{kinds: kinds, part: p, sha: sha, head: head}
	if f.sha == nil {
		f.sha = sha256.New()
	}
	f.sha.Reset()
	// Every name the part carries: a client may show any of them.
	names := p.Names
	if len(names) == 0 {
		names = []string{p.Name}
	}
	for _, name := range names {
		if r := kinds.byName(name, p.Type); r != "" {
			f.risk, f.decided = r, true
			break
		}
	}
	f.fnv = fnvOffset
}

func (f *fingerprinter) Write(b []byte) (int, error) {
	if !f.decided {
		take := min(len(b), sniffLen-len(f.head))
		f.head = append(f.head, b[:take]...)
		if len(f.head) < sniffLen {
			return len(b), nil
		}
		f.decide()
		if f.risk == "" {
			return len(b), mimewalk.ErrSkipContent
		}
		f.consume(f.head)
		f.consume(b[take:])
		return len(b), nil
	}
	if f.risk == "" {
		return len(b), mimewalk.ErrSkipContent
	}
	f.consume(b)
	return len(b), nil
}

func (f *fingerprinter) decide() {
	f.decided = true
	f.risk = f.kinds.byContent(mimewalk.Sniff(f.head))
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func (f *fingerprinter) consume(b []byte) {
	f.size += int64(len(b))
	f.sha.Write(b)
	if f.chunked >= fuzzyBytes {
		return
	}
	if rest := fuzzyBytes - f.chunked; int64(len(b)) > rest {
		b = b[:rest]
	}
	f.chunked += int64(len(b))
	roll, h, n := f.roll, f.fnv, f.chunkLen
	for _, c := range b {
		roll = roll<<1 + gear[c]
		h = (h ^ uint64(c)) * fnvPrime
		n++
		if n >= minChunk && roll&chunkMask == 0 || n >= maxChunk {
			f.add(h)
			h, n = fnvOffset, 0
		}
	}
	f.roll, f.fnv, f.chunkLen = roll, h, n
}

// add keeps a chunk's hash if it is among the smallest so far.
func (f *fingerprinter) add(h uint64) {
	// A finalizer spreads FNV's low-entropy high bits.
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	for i := 0; i < f.n; i++ {
		if f.sketch[i] == h {
			return
		}
	}
	if f.n < sketchSize {
		f.sketch[f.n] = h
		f.n++
	} else {
		maxAt := 0
		for i := 1; i < sketchSize; i++ {
			if f.sketch[i] > f.sketch[maxAt] {
				maxAt = i
			}
		}
		if h >= f.sketch[maxAt] {
			return
		}
		f.sketch[maxAt] = h
	}
}

// finish returns the attachment, or nil when the part is not risky.
func (f *fingerprinter) finish() *Attachment {
	if !f.decided {
		f.decide()
		if f.risk != "" {
			f.consume(f.head)
		}
	}
	if f.risk == "" {
		return nil
	}
	if f.chunkLen > 0 {
		f.add(f.fnv)
	}
	a := &Attachment{Name: f.part.Name, Kind: f.risk, Size: f.size}
	f.sha.Sum(a.SHA256[:0])
	if f.size >= minFuzzySize {
		a.Sketch = append([]uint64(nil), f.sketch[:f.n]...)
		sortUint64(a.Sketch)
	}
	return a
}

func sortUint64(s []uint64) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// Kinds is the set of attachment kinds fingerprinted.
type Kinds map[string]bool

// The kinds a configuration may name.
const (
	KindPrograms   = "programs"
	KindScripts    = "scripts"
	KindArchives   = "archives"
	KindDiskImages = "disk-images"
	KindHTML       = "html"
	KindMacroDocs  = "macro-documents"
	KindPDF        = "pdf"
	KindAll        = "all"
)

// AllKinds lists them; DefaultKinds is the default set.
var (
	AllKinds     = []string{KindPrograms, KindScripts, KindArchives, KindDiskImages, KindHTML, KindMacroDocs, KindPDF, KindAll}
	DefaultKinds = []string{KindPrograms, KindScripts, KindArchives, KindDiskImages, KindHTML, KindMacroDocs}
)

var extKinds = map[string]string{}

func init() {
	for kind, exts := range map[string]string{
		KindPrograms:   "exe com scr pif dll cpl msi msp sys app jar apk",
		KindScripts:    "js jse vbs vbe wsf wsh wsc hta bat cmd ps1 psm1 psd1 reg lnk url sh py pl scf inf",
		KindArchives:   "zip rar 7z gz tgz tar bz2 xz cab ace arj lzh lha z uue xxe zipx",
		KindDiskImages: "iso img vhd vhdx dmg udf",
		KindHTML:       "htm html xhtml shtml svg mht mhtml xht",
		KindMacroDocs:  "doc xls ppt docm xlsm pptm dotm xltm xlam ppam potm sldm one rtf xlsb",
		KindPDF:        "pdf",
	} {
		for _, e := range strings.Fields(exts) {
			extKinds[e] = kind
		}
	}
}

var contentKinds = map[string]string{
	mimewalk.KindExe: KindPrograms, mimewalk.KindELF: KindPrograms, mimewalk.KindMachO: KindPrograms,
	mimewalk.KindZip: KindArchives, mimewalk.KindRAR: KindArchives, mimewalk.Kind7z: KindArchives, mimewalk.KindGzip: KindArchives,
	mimewalk.KindOLE: KindMacroDocs, mimewalk.KindRTF: KindMacroDocs, mimewalk.KindPDF: KindPDF,
}

// byName is the risky kind a part's name or declared type says, or "".
func (k Kinds) byName(name, mediaType string) string {
	if name != "" {
		ext := strings.TrimPrefix(path.Ext(strings.TrimRight(strings.ToLower(name), ". \t")), ".")
		if kind := extKinds[ext]; kind != "" && k[kind] {
			return kind
		}
	}
	if k[KindHTML] && name != "" && mediaType == "text/html" {
		return KindHTML
	}
	if k[KindAll] && (name != "" || !strings.HasPrefix(mediaType, "text/")) {
		return KindAll
	}
	return ""
}

// byContent is the risky kind a part's first bytes show, or "".
func (k Kinds) byContent(sniffed string) string {
	if kind := contentKinds[sniffed]; kind != "" && k[kind] {
		return kind
	}
	return ""
}
