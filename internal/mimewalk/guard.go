package mimewalk

import (
	"bytes"
	"errors"
	"io"
)

// Limits on one header section (the message's, or a part's), which the
// parser keeps whole in memory, field by field: a 10 MB part header of
// short fields would cost some 600 MB of allocations.
const (
	maxHeaderFields = 10000
	maxSectionBytes = 1 << 20
)

// headerGuard watches the raw stream for header sections that are too
// large, before the parser gets them. It cannot know the boundaries, so
// it counts the header-like lines ("Name: value", and continuation lines)
// that follow the message's start or a line starting with "--" (each
// part header follows its boundary line), until a blank line or a line
// that is no header field ends the run. Real headers have tens of
// fields; a body with 10,000 "Name: value" lines in a row after a "--"
// line is the guard's one false alarm. Base64 has no such lines.
type headerGuard struct {
	r        io.Reader
	err      error // a limit hit, or the stream's own failure
	counting bool
	fields   int
	bytes    int
	// the current line, as far as read
	lineLen int
	first   [2]byte
	colon   bool // a ":" before any blank: "Name:"
	blank   bool // a blank or control character seen before a ":"
	atStart bool
}

func newHeaderGuard(r io.Reader) *headerGuard {
	return &headerGuard{r: r, counting: true, atStart: true}
}

func (g *headerGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		g.err = err // the stream's failure ends the walk, sticky as a limit
	}
	for i := 0; i < n; i++ {
		c := p[i]
		if !g.counting && g.lineLen >= 2 {
			// In a body only a line's first bytes matter: skip to its end.
			j := bytes.IndexByte(p[i:n], '\n')
			if j < 0 {
				g.lineLen += n - i
				break
			}
			g.lineLen += j
			i += j
			c = '\n'
		}
		if c == '\n' {
			g.endLine()
			if g.err != nil {
				return 0, g.err
			}
			continue
		}
		if g.lineLen < 2 {
			g.first[g.lineLen] = c
		}
		g.lineLen++
		if !g.colon && !g.blank {
			switch {
			case c == ':':
				g.colon = g.lineLen > 1
			case c <= ' ' || c == 0x7f:
				g.blank = true
			}
		}
		if g.counting && g.bytes+g.lineLen > maxSectionBytes {
			g.err = &LimitError{"max_header", maxSectionBytes}
			return 0, g.err
		}
	}
	return n, err
}

func (g *headerGuard) endLine() {
	n := g.lineLen
	if n > 0 && g.first[0] == '\r' && n == 1 {
		n = 0
	}
	boundary := n >= 2 && g.first[0] == '-' && g.first[1] == '-'
	continuation := n > 0 && (g.first[0] == ' ' || g.first[0] == '\t')
	switch {
	case boundary:
		g.counting, g.fields, g.bytes = true, 0, 0
	case !g.counting:
	case n == 0:
		g.counting = false // the blank line ending the header
	case g.colon || continuation:
		g.fields++
		g.bytes += g.lineLen + 1
		if g.fields > maxHeaderFields {
			g.err = &LimitError{"max_header", maxHeaderFields}
		}
	default:
		g.counting = false // body text, not a header
	}
	g.lineLen, g.colon, g.blank = 0, false, false
}
