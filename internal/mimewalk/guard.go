package mimewalk

import (
	"bytes"
	"errors"
	"io"
)

// Limits on one header section (the message's, an attached message's, or
// a part's), which the parser keeps whole in memory, field by field: a
// 10 MB part header of short fields would cost some 600 MB of
// allocations.
const (
	maxHeaderFields = 10000
	maxSectionBytes = 1 << 20
)

// Of a header section, the parser is given only the fields the walk
// reads (see readField), at most maxReadFields of them: the rest, however
// many under the limits above, are counted and dropped, so a section of
// 10,000 short fields is not held at 60 times its size. A section with
// more fields the walk reads than any mail client writes is past a limit:
// a name in the last of them must not go unseen.
const maxReadFields = 64

// readField says whether the walk reads a field of this name (the parser
// trims blanks around it and ignores case).
func readField(name []byte) bool {
	name = bytes.Trim(name, " \t")
	for _, f := range []string{"Content-Type", "Content-Disposition", "Content-Transfer-Encoding"} {
		if bytes.EqualFold(name, []byte(f)) {
			return true
		}
	}
	return false
}

// maxKey bounds the bytes of a header line held back until its colon
// shows whether it is a field the parser takes (RFC 5322's line limit).
const maxKey = 998

// streamGuard is the first reader of the message's stream: its failure
// (other than the end) ends the walk, sticky, whatever the parser makes
// of it.
type streamGuard struct {
	r   io.Reader
	err error
}

func (g *streamGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		g.err = err
	}
	return n, err
}

// What a sections reader is reading.
const (
	inPreamble = iota // before a multipart's first boundary: dropped
	inHeader          // a header section, bounded and repaired
	inBody            // a part's content, passed as it is
	inRest            // after a message's header or a multipart's end
)

// sections stands between a stream and go-message's header parser, which
// sees only what it passes. Knowing where each header section starts (the
// message's start, or a multipart's boundary line), it
//
//   - bounds each section (fields and bytes) as the parser will see it,
//     whatever its lines look like: the parser takes ":x" and "X-A :b" for
//     fields, so counting must not stop at them;
//   - passes a line the parser would stop at (no colon, a name with a
//     blank or a control character in it, a first line starting with a
//     blank) as one it skips (":" put before it), so one broken part
//     header does not end the walk: the part's other fields and every
//     later part are read, as a mail client reads them;
//   - ends a part header at a boundary line, as a mail client does, not
//     taking the next part's fields as its own;
//   - passes a boundary line the parser would stop at (words after the
//     boundary, another line end than the first boundary's) as the
//     boundary alone, as a mail client takes it, so the parts after it
//     are read;
//   - drops a multipart's preamble, which no one reads and whose long
//     lines the parser cannot take.
//
// The content of parts passes unchanged.
type sections struct {
	src   io.Reader
	dash  []byte // "--" and the boundary; nil for a message's header
	stop  func(error)
	state int
	in    []byte
	buf   []byte // out's own storage
	out   []byte // produced, not yet read
	// nl is the line end of the first boundary line, as the parser takes
	// it; crlf that the last line ended with "\r\n" (the parser finds a
	// boundary in a part's content only after its line end).
	nl   []byte
	crlf bool
	last byte  // the last byte passed
	err  error // the source's end or failure, or a limit hit
	// The current line.
	line     []byte // its start, held while undecided
	pass     bool   // its fate is known: the rest of it passes (or is dropped)
	prefix   int    // whether it starts a boundary line (maybe, no, yes)
	broken   int    // it is a boundary with words after it: 1 a delimiter, 2 the final one
	firstHdr bool   // the next line is a header section's first
	drop     bool   // the current header line (a field the walk does not read, or its continuation) is not passed
	fields   int
	read     int // fields passed to the parser
	bytes    int
}

// newSections reads a message (dash nil: a header, then the body as it
// is) or a multipart's body (dash "--boundary"). stop records a limit hit.
func newSections(src io.Reader, dash []byte, stop func(error)) *sections {
	// The parser reads through a bufio.Reader of 4 KiB: more at once
	// would only cost memory.
	s := &sections{src: src, dash: dash, stop: stop, in: make([]byte, 4<<10), buf: make([]byte, 0, 4<<10+64), state: inPreamble, firstHdr: true}
	if dash == nil {
		s.state = inHeader
	}
	return s
}

func (s *sections) Read(p []byte) (int, error) {
	if len(s.out) == 0 && s.err == nil && s.state == inRest && len(s.line) == 0 {
		return s.src.Read(p) // nothing more to look at
	}
	for len(s.out) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		s.fill()
	}
	n := copy(p, s.out)
	s.out = s.out[n:]
	return n, nil
}

func (s *sections) fill() {
	n, err := s.src.Read(s.in)
	s.out = s.buf[:0]
	defer func() { s.buf = s.out[:0] }()
	data := s.in[:n]
	for len(data) > 0 && s.err == nil {
		if s.pass {
			end, i := s.passing(data)
			if s.state == inHeader && s.count(end) {
				return
			}
			if s.state != inPreamble && s.broken == 0 && !(s.state == inHeader && s.drop) {
				s.out = append(s.out, data[:end]...)
			}
			if i >= 0 {
				s.crlf = i > 0 && data[i-1] == '\r' || i == 0 && s.last == '\r'
				s.endLine()
			}
			s.last = data[end-1]
			data = data[end:]
			continue
		}
		c := data[0]
		data = data[1:]
		if s.state == inHeader && s.count(1) {
			return
		}
		s.line = append(s.line, c)
		if c == '\n' {
			s.decideLine()
			continue
		}
		s.decidePart(c)
	}
	if err != nil && s.err == nil {
		// The end: a line cut short goes as it is (the parser ends
		// there); in a header, as one the parser skips.
		if s.state == inHeader && len(s.line) > 0 && s.broken == 0 {
			s.out = append(s.out, ':')
		}
		if s.state != inPreamble && s.broken == 0 {
			s.out = append(s.out, s.line...)
		}
		s.line = s.line[:0]
		s.err = err
	}
}

// passing says how much of data passes with the current line: to its
// end (i the index of its "\n", -1 if not in data), and in a part's
// content on over the lines that cannot be boundaries (not starting with
// "-"), which is nearly all of them.
func (s *sections) passing(data []byte) (end, i int) {
	j := 0
	for {
		k := bytes.IndexByte(data[j:], '\n')
		if k < 0 {
			return len(data), -1
		}
		k += j
		if s.state != inHeader && s.broken == 0 && k+1 < len(data) && data[k+1] != '-' {
			j = k + 1
			continue
		}
		return k + 1, k
	}
}

// count adds n bytes to the current header section, and says whether
// that passed a limit.
func (s *sections) count(n int) bool {
	s.bytes += n
	if s.bytes > maxSectionBytes {
		s.limit(&LimitError{"max_header", maxSectionBytes})
		return true
	}
	return false
}

func (s *sections) limit(err error) {
	s.err = err
	s.out = s.out[:0]
	s.stop(err)
}

// decidePart looks at a line being held, its last byte c, before its end:
// is it still maybe a boundary line, or (in a header) a field name?
func (s *sections) decidePart(c byte) {
	if s.state == inRest {
		s.release(false)
		return
	}
	switch s.boundaryPrefix(c) {
	case maybe:
		return
	case yes:
		n, d := len(s.line), len(s.dash)
		dash := c == '-' && (n == d+1 || n == d+2 && s.line[d] == '-')
		if n > d+66 || !dash && c != ' ' && c != '\t' && c != '\r' {
			// Words after a boundary: the parser ends the part there and
			// then stops; a mail client takes the line for the boundary.
			s.broken = s.brokenKind(s.line)
			s.line = s.line[:0]
			s.pass = true
		}
		return
	}
	if s.state != inHeader {
		s.release(false)
		return
	}
	if len(s.line) == 1 && (c == ' ' || c == '\t') {
		// A continuation line goes where its field goes; the parser
		// refuses one that starts a header.
		s.drop = s.drop || s.firstHdr
		s.release(false)
		return
	}
	if c == ':' || s.prefix == no && len(s.line) <= len(s.dash)+2 {
		// (Just found no boundary: a boundary may hold a colon.)
		if i := bytes.IndexByte(s.line, ':'); i >= 0 {
			key := s.line[:i]
			s.drop = !validKey(key) || !readField(key)
			if !s.drop {
				s.read++
				if s.read > maxReadFields {
					s.limit(&LimitError{"max_header", maxReadFields})
					return
				}
			}
			s.release(false)
			return
		}
	}
	if len(s.line) > maxKey {
		s.drop = true // no field: the parser would skip it
		s.release(false)
	}
}

// What boundaryPrefix says of a line's start.
const (
	maybe = iota // not yet known
	no
	yes // the parser's multipart reader takes it for a boundary
)

// boundaryPrefix says, from the line held so far and its last byte c,
// whether the line starts a boundary line, as go-message's multipart
// reader finds them in a part: "--boundary" then a blank, a line end, or
// a "-". Before the first part, the reader takes only a line that is
// nothing else. It looks at each byte once.
func (s *sections) boundaryPrefix(c byte) int {
	if s.prefix != maybe {
		return s.prefix
	}
	n, d := len(s.line), len(s.dash)
	switch {
	case s.dash == nil || s.state == inBody && string(s.nl) == "\r\n" && !s.crlf:
		s.prefix = no // (in a part, a boundary only after a "\r\n")
	case n <= d:
		if c != s.dash[n-1] {
			s.prefix = no
		}
	case s.state == inPreamble:
		dash := c == '-' && (n == d+1 || n == d+2 && s.line[d] == '-')
		if n > d+66 || !dash && c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			s.prefix = no
		}
	default: // n == d+1
		switch c {
		case ' ', '\t', '\r', '\n', '-':
			s.prefix = yes
		default:
			s.prefix = no
		}
	}
	return s.prefix
}

// brokenKind is what a boundary line with words after it is taken for:
// the final boundary if "--" follows the boundary, else a delimiter.
func (s *sections) brokenKind(line []byte) int {
	if bytes.HasPrefix(line[len(s.dash):], []byte("--")) {
		return 2
	}
	return 1
}

// release passes the line held so far, made one the parser skips if
// skip, and the rest of the line after it (in a header, unless dropped).
func (s *sections) release(skip bool) {
	if len(s.line) > 0 {
		s.last = s.line[len(s.line)-1]
	}
	if s.state != inPreamble && !(s.state == inHeader && s.drop) {
		if skip {
			s.out = append(s.out, ':')
		}
		s.out = append(s.out, s.line...)
	}
	s.line = s.line[:0]
	s.pass = true
}

// decideLine handles a line held whole, to its end.
func (s *sections) decideLine() {
	line := s.line
	prefix := s.boundaryPrefix('\n')
	s.line, s.prefix = s.line[:0], maybe
	final, delimiter := s.boundary(line)
	if !final && !delimiter && prefix == yes {
		// A boundary the parser would stop at ("--b\n" among "\r\n"
		// lines, a "\r" among its blanks): taken as a client takes it.
		s.crlf = bytes.HasSuffix(line, []byte("\r\n"))
		s.broken = s.brokenKind(line)
		s.boundaryLine()
		return
	}
	if s.nl == nil && delimiter {
		s.nl = nl(line)
	}
	s.crlf = bytes.HasSuffix(line, []byte("\r\n"))
	s.last = '\n'
	switch {
	case delimiter || final:
		if s.state == inHeader {
			// A part header cut short by the next boundary: end it there.
			s.out = append(s.out, nl(line)...)
		}
		s.out = append(s.out, line...)
		s.next(final)
	case s.state == inHeader && (len(line) == 1 || len(line) == 2 && line[0] == '\r'):
		// The blank line ending the header. (The parser takes a
		// boundary first in a part's content whatever the line end.)
		s.out = append(s.out, line...)
		s.state, s.crlf = inBody, true
		if s.dash == nil {
			s.state = inRest
		}
	case s.state == inHeader:
		s.drop = true // a line without a colon: the parser would skip it
		s.field()
	case s.state != inPreamble:
		s.out = append(s.out, line...)
	}
}

// boundaryLine ends a broken boundary line: what the parser gets is the
// boundary alone.
func (s *sections) boundaryLine() {
	end := s.nl
	if end == nil {
		end = []byte("\n")
		if s.crlf {
			end = []byte("\r\n")
		}
	}
	if s.state == inHeader {
		s.out = append(s.out, end...)
	}
	s.out = append(s.out, s.dash...)
	if s.broken == 2 {
		s.out = append(s.out, "--"...)
	}
	s.out = append(s.out, end...)
	s.last = '\n'
	s.next(s.broken == 2)
	s.broken = 0
}

// next starts what follows a boundary line: a part's header, or (after
// the final one) the rest.
func (s *sections) next(final bool) {
	if final {
		s.state = inRest
		return
	}
	s.state, s.fields, s.read, s.bytes, s.firstHdr, s.drop = inHeader, 0, 0, 0, true, false
}

// endLine ends a line that passed.
func (s *sections) endLine() {
	s.pass, s.prefix = false, maybe
	if s.broken != 0 {
		s.boundaryLine()
		return
	}
	if s.state == inHeader {
		s.field()
	}
}

func (s *sections) field() {
	s.firstHdr = false
	s.fields++
	if s.fields > maxHeaderFields {
		s.limit(&LimitError{"max_header", maxHeaderFields})
	}
}

// boundary says whether a whole line is the final boundary or a
// delimiter, as go-message's multipart reader tells them: "--boundary",
// blanks, the line's end (a final one with "--" after the boundary).
func (s *sections) boundary(line []byte) (final, delimiter bool) {
	if s.dash == nil || !bytes.HasPrefix(line, s.dash) {
		return false, false
	}
	if s.state == inBody && string(s.nl) == "\r\n" && !s.crlf {
		return false, false // not after a "\r\n": content to the parser
	}
	rest := line[len(s.dash):]
	if bytes.HasPrefix(rest, []byte("--")) {
		final = true
		rest = rest[2:]
	}
	rest = bytes.TrimLeft(rest, " \t")
	if s.nl != nil && string(rest) != string(s.nl) || string(rest) != "\r\n" && string(rest) != "\n" {
		return false, false
	}
	return final, !final
}

// nl is the line end a line has.
func nl(line []byte) []byte {
	if bytes.HasSuffix(line, []byte("\r\n")) {
		return []byte("\r\n")
	}
	return []byte("\n")
}

// validKey: the parser takes a field of this name (blanks around it
// trimmed; none left: a field it skips).
func validKey(name []byte) bool {
	for _, c := range bytes.Trim(name, " \t") {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}
