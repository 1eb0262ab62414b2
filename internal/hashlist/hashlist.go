// Package hashlist reads blocklists of file hashes, as threat feeds publish
// them: ClamAV's hash databases (.hsb "HASH:SIZE:NAME" with SHA-256 or
// SHA-1, .hdb "MD5:SIZE:NAME", an optional ":FLEVEL" after the name) and
// plain files of one hex hash per line. A lookup is one map lookup.
package hashlist

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"mailguard/internal/linefile"
)

// Entry is what a list says of a hash.
type Entry struct {
	// Size is the file's size, or -1 when the list says any ("*" or none).
	Size int64
	// Name names the file or its threat; "" when the list gives none.
	Name string
	file *string // shared by the file's entries: one string per file, not per hash
	line int
}

// Source is the list file and line the entry comes from, for logs.
func (e Entry) Source() string {
	if e.file == nil {
		return ""
	}
	return *e.file + ":" + strconv.Itoa(e.line)
}

// List is a set of hashes. Its zero value is empty and usable.
type List struct {
	sha256 map[[sha256.Size]byte]Entry
	sha1   map[[sha1.Size]byte]Entry
	md5    map[[md5.Size]byte]Entry
}

// Len is the number of hashes in the list.
func (l *List) Len() int { return len(l.sha256) + len(l.sha1) + len(l.md5) }

// Kinds reports which hash functions the list needs computed.
func (l *List) Kinds() (sha256, sha1, md5 bool) {
	return len(l.sha256) > 0, len(l.sha1) > 0, len(l.md5) > 0
}

// Sums are a file's hashes, those the list needs.
type Sums struct {
	SHA256 [sha256.Size]byte
	SHA1   [sha1.Size]byte
	MD5    [md5.Size]byte
	Size   int64
}

// Lookup finds a file's hashes in the list; size must agree where the
// list gives one.
func (l *List) Lookup(s *Sums) (Entry, bool) {
	if e, ok := l.sha256[s.SHA256]; ok && (e.Size < 0 || e.Size == s.Size) {
		return e, true
	}
	if e, ok := l.sha1[s.SHA1]; ok && (e.Size < 0 || e.Size == s.Size) {
		return e, true
	}
	if e, ok := l.md5[s.MD5]; ok && (e.Size < 0 || e.Size == s.Size) {
		return e, true
	}
	return Entry{}, false
}

// Load reads a list file of at most maxSize bytes into l. Every problem
// is reported with its file and line.
func (l *List) Load(path string, maxSize int64) error {
	return linefile.ReadFile(path, maxSize, func(line int, f []string) error { return l.add(&path, line, f) })
}

// Read reads a list from r; name is its file name in errors.
func (l *List) Read(name string, r io.Reader) error {
	return linefile.Read(name, r, func(line int, f []string) error { return l.add(&name, line, f) })
}

var errFormat = errors.New(`want HASH:SIZE:NAME (ClamAV .hsb/.hdb) or one hex hash (MD5, SHA-1 or SHA-256) per line`)

func (l *List) add(file *string, line int, fields []string) error {
	e := Entry{Size: -1, file: file, line: line}
	text := fields[0]
	if strings.Contains(text, ":") {
		all := text
		if len(fields) > 1 { // ClamAV's name may hold blanks; linefile split them off
			all = strings.Join(fields, " ")
		}
		hash, rest, _ := strings.Cut(all, ":")
		size, rest, ok := strings.Cut(rest, ":")
		if !ok {
			return errFormat
		}
		name, _, _ := strings.Cut(rest, ":") // a FLEVEL may follow
		text, e.Name = hash, name
		if size != "*" {
			n, err := strconv.ParseInt(size, 10, 64)
			if err != nil || n < 0 {
				return fmt.Errorf("size %q: want a number of bytes or *", size)
			}
			e.Size = n
		}
	} else if len(fields) > 1 {
		return errFormat
	}
	var sum [sha256.Size]byte
	if len(text)%2 != 0 || len(text) > 2*len(sum) {
		if _, err := hex.DecodeString(text); err != nil {
			return fmt.Errorf("hash %q is not hexadecimal: %s", short(text), errFormat)
		}
		return fmt.Errorf("hash of %d hex digits: want 32 (MD5), 40 (SHA-1) or 64 (SHA-256)", len(text))
	}
	n, err := hex.Decode(sum[:], []byte(text))
	if err != nil {
		return fmt.Errorf("hash %q is not hexadecimal: %s", short(text), errFormat)
	}
	switch n {
	case sha256.Size:
		if l.sha256 == nil {
			l.sha256 = map[[sha256.Size]byte]Entry{}
		}
		l.sha256[sum] = e
	case sha1.Size:
		if l.sha1 == nil {
			l.sha1 = map[[sha1.Size]byte]Entry{}
		}
		l.sha1[[sha1.Size]byte(sum[:sha1.Size])] = e
	case md5.Size:
		if l.md5 == nil {
			l.md5 = map[[md5.Size]byte]Entry{}
		}
		l.md5[[md5.Size]byte(sum[:md5.Size])] = e
	default:
		return fmt.Errorf("hash of %d hex digits: want 32 (MD5), 40 (SHA-1) or 64 (SHA-256)", len(text))
	}
	return nil
}

func short(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
