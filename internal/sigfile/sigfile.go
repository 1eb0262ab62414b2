// Package sigfile reads signature files: the list of named literal patterns
// that the virus filter looks for in raw message bodies.
//
// The format is the one postmasters already keep:
//
//	# comment
//	WORM_SOBIG.B =
//	uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3
//	WORM_KLEZ.H = TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAA
//	BINARY_THING = hex:4d5a90000300000004000000ffff0000
//
// A name line "NAME =" (a blank before the "=") is followed by the pattern on the next line, or the
// pattern follows the "=" on the same line. Leading and trailing blanks of a
// pattern are not part of it; a pattern that starts with "hex:" is written as
// hexadecimal digits (blanks between byte pairs allowed), for bytes that are
// not text, or for a pattern whose ends are blanks. Patterns are matched as
// literal bytes of the message as the MTA sends it: MIME-encoded, not decoded.
package sigfile

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"mailguard/internal/fileerr"
	"mailguard/internal/matcher"
	"mailguard/internal/safefile"
)

// Signature is one named pattern and where it was defined.
type Signature struct {
	Name    string
	Pattern []byte
	Line    int
}

// Error is one problem at a line of a file: the one type every file
// mailguard reads reports with.
type Error = fileerr.Error

// maxLineLen bounds what one line may hold, so a broken file (say, a binary
// sent by mistake) cannot make the reader buffer without limit.
const maxLineLen = 64 * 1024

// Load reads and parses a signature file: a regular file of at most
// maxSize bytes (0: no bound), opened without blocking (see safefile).
func Load(path string, maxSize int64) ([]Signature, error) {
	f, _, err := safefile.Open(path, safefile.Options{MaxSize: maxSize})
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(path, safefile.Reader(f, maxSize, path))
}

// Parse reads signatures from r; name is used in error messages. It returns
// every problem it finds, joined, not only the first.
func Parse(name string, r io.Reader) ([]Signature, error) {
	var (
		sigs    []Signature
		probs   safefile.Problems
		pending *Signature // a "NAME =" line waiting for its pattern line
		byName  = map[string]int{}
		byBytes = map[string]string{}
		lineNo  int
	)
	fail := func(line int, format string, args ...any) {
		probs.Add(&Error{File: name, Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	add := func(s Signature, patternText string) {
		p, err := decodePattern(patternText)
		if err != nil {
			fail(s.Line, "signature %s: %v", s.Name, err)
			return
		}
		switch {
		case len(p) < matcher.MinPatternLen:
			fail(s.Line, "signature %s: pattern is %d bytes, the minimum is %d", s.Name, len(p), matcher.MinPatternLen)
			return
		case len(p) > matcher.MaxPatternLen:
			fail(s.Line, "signature %s: pattern is %d bytes, the maximum is %d", s.Name, len(p), matcher.MaxPatternLen)
			return
		}
		if first, dup := byName[s.Name]; dup {
			fail(s.Line, "signature %s is defined twice (first at line %d)", s.Name, first)
			return
		}
		if other, dup := byBytes[string(p)]; dup {
			fail(s.Line, "signature %s has the same pattern as %s", s.Name, other)
			return
		}
		byName[s.Name] = s.Line
		byBytes[string(p)] = s.Name
		s.Pattern = p
		sigs = append(sigs, s)
	}

	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLineLen)
	for sc.Scan() {
		lineNo++
		raw := sc.Bytes()
		if lineNo == 1 && safefile.HasBOM(raw) {
			return nil, &Error{File: name, Line: 1, Msg: safefile.BOMProblem}
		}
		if bytes.IndexByte(raw, 0) >= 0 {
			fail(lineNo, "NUL byte in line (write such a pattern as hex:)")
			pending = nil
			continue
		}
		line := strings.TrimSpace(string(raw))
		if pending != nil {
			s := *pending
			pending = nil
			if line == "" || line[0] == '#' {
				fail(s.Line, "signature %s has no pattern: the line after %q must hold it", s.Name, s.Name+" =")
				continue
			}
			if _, _, isName := splitNameLine(line); !isName {
				add(s, line)
				continue
			}
			fail(s.Line, "signature %s has no pattern: line %d starts the next signature", s.Name, lineNo)
			// go on to read this line as a name line
		}
		if line == "" || line[0] == '#' {
			continue
		}
		nameText, patternText, ok := splitNameLine(line)
		if !ok {
			if i := strings.Index(line, " ="); i > 0 {
				if err := checkName(strings.TrimSpace(line[:i])); err != nil {
					fail(lineNo, "%v", err)
					continue
				}
			}
			fail(lineNo, `pattern with no name (a signature starts with "NAME =", a blank before the "=")`)
			continue
		}
		s := Signature{Name: nameText, Line: lineNo}
		if patternText == "" {
			pending = &s
			continue
		}
		add(s, patternText)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			fail(lineNo+1, "line longer than %d bytes", maxLineLen)
		} else {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	if pending != nil {
		fail(pending.Line, "signature %s has no pattern: the file ends after %q", pending.Name, pending.Name+" =")
	}
	if err := probs.Err(name); err != nil {
		return nil, err
	}
	return sigs, nil
}

// splitNameLine splits "NAME = rest". A blank must come before the "=":
// that is how a signature's first line is told from a pattern line (base64
// has "=" only as padding and never a blank).
func splitNameLine(line string) (name, rest string, ok bool) {
	i := strings.IndexByte(line, '=')
	if i <= 0 {
		return "", "", false
	}
	name = strings.TrimRight(line[:i], " \t")
	if len(name) == i {
		return "", "", false
	}
	if checkName(name) != nil {
		return "", "", false
	}
	return name, strings.TrimSpace(line[i+1:]), true
}

func checkName(name string) error {
	if name == "" {
		return errors.New("empty signature name")
	}
	if len(name) > 200 {
		return fmt.Errorf("signature name longer than 200 characters")
	}
	for _, c := range name {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.ContainsRune("._-:/+", c)) {
			return fmt.Errorf("signature name %q: only letters, digits and . _ - : / + are allowed", name)
		}
	}
	return nil
}

func decodePattern(text string) ([]byte, error) {
	if h, ok := strings.CutPrefix(text, "hex:"); ok {
		h = strings.Join(strings.Fields(h), "")
		if h == "" {
			return nil, errors.New("empty hex pattern")
		}
		b, err := hex.DecodeString(h)
		if err != nil {
			return nil, fmt.Errorf("bad hex pattern: %v", err)
		}
		return b, nil
	}
	if text == "" {
		return nil, errors.New("empty pattern")
	}
	return []byte(text), nil
}

// FormatPattern writes a pattern as Parse reads it back: as text when
// the text reads as itself (printable ASCII, no blank at either end, not
// a comment, a hex: pattern or a name line), else as hex:.
func FormatPattern(p []byte) string {
	text := string(p)
	ok := len(p) > 0 && len(p) <= maxLineLen/2 && p[0] != ' ' && p[len(p)-1] != ' ' && p[0] != '#' && !strings.HasPrefix(text, "hex:")
	for _, c := range p {
		ok = ok && c >= ' ' && c <= '~'
	}
	if _, _, isName := splitNameLine(text); ok && !isName {
		return text
	}
	return "hex:" + hex.EncodeToString(p)
}

// Patterns converts signatures into matcher input.
func Patterns(sigs []Signature) []matcher.Pattern {
	ps := make([]matcher.Pattern, len(sigs))
	for i, s := range sigs {
		ps[i] = matcher.Pattern{Name: s.Name, Bytes: s.Pattern}
	}
	return ps
}
