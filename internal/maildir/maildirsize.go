// Package maildir reads users' Maildirs for quota decisions: the Maildir++
// maildirsize file that Dovecot, Courier and maildrop keep, and, where that
// file is missing or stale, the message files themselves. It only ever
// reads: it never creates, changes or removes anything in a Maildir.
package maildir

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// Definition is a quota definition line such as "26214400S,1000C".
// A zero limit is unlimited. Set tells a definition line from none.
type Definition struct {
	Bytes, Count int64
	Set          bool
}

// Totals is what a mailbox holds.
type Totals struct {
	Bytes, Count int64
}

// StaleSize is the size at which Maildir++ says maildirsize must be
// recalculated from the messages.
const StaleSize = 5120

// ParseDefinition reads a definition line: comma-separated parts, a number
// followed by S (bytes) or C (messages). An empty line defines nothing.
func ParseDefinition(line string) (Definition, error) {
	d := Definition{Set: true}
	line = strings.TrimSpace(line)
	if line == "" {
		return Definition{}, nil
	}
	for _, part := range strings.Split(line, ",") {
		part = strings.TrimSpace(part)
		if len(part) < 2 {
			return Definition{}, fmt.Errorf("quota definition %q: bad part %q", line, part)
		}
		n, err := strconv.ParseInt(part[:len(part)-1], 10, 64)
		if err != nil || n < 0 {
			return Definition{}, fmt.Errorf("quota definition %q: bad number in %q", line, part)
		}
		switch part[len(part)-1] {
		case 'S':
			d.Bytes = n
		case 'C':
			d.Count = n
		default:
			return Definition{}, fmt.Errorf("quota definition %q: unknown unit in %q", line, part)
		}
	}
	return d, nil
}

// ParseMaildirsize reads a maildirsize file: the definition line, then
// lines of "bytes count" whose sums are the mailbox's totals (removals are
// negative). Anything malformed, a negative or overflowing total, is an
// error: the caller then counts the messages instead.
func ParseMaildirsize(r io.Reader) (Definition, Totals, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, StaleSize+1), StaleSize+1)
	first, err := br.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return Definition{}, Totals{}, err
	}
	if err != nil && first == "" {
		return Definition{}, Totals{}, errors.New("empty maildirsize")
	}
	def, err := ParseDefinition(first)
	if err != nil {
		return Definition{}, Totals{}, err
	}
	var t Totals
	for lineNo := 2; ; lineNo++ {
		line, err := br.ReadString('\n')
		if line == "" && errors.Is(err, io.EOF) {
			break
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return Definition{}, Totals{}, err
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 {
			return Definition{}, Totals{}, fmt.Errorf("maildirsize line %d: want \"bytes count\"", lineNo)
		}
		b, err1 := strconv.ParseInt(f[0], 10, 64)
		c, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 != nil || err2 != nil {
			return Definition{}, Totals{}, fmt.Errorf("maildirsize line %d: bad number", lineNo)
		}
		if !addOK(t.Bytes, b) || !addOK(t.Count, c) {
			return Definition{}, Totals{}, fmt.Errorf("maildirsize line %d: total overflows", lineNo)
		}
		t.Bytes += b
		t.Count += c
	}
	if t.Bytes < 0 || t.Count < 0 {
		return Definition{}, Totals{}, fmt.Errorf("maildirsize totals are negative (%d bytes, %d messages)", t.Bytes, t.Count)
	}
	return def, t, nil
}

func addOK(a, b int64) bool {
	return !(b > 0 && a > math.MaxInt64-b || b < 0 && a < math.MinInt64-b)
}

// Over reports whether totals exceed a definition.
func (d Definition) Over(t Totals) bool {
	return d.Bytes > 0 && t.Bytes > d.Bytes || d.Count > 0 && t.Count > d.Count
}
