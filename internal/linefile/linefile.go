// Package linefile reads the simple line-oriented files postmasters keep
// (the user directory, sender blocklists): blank-separated fields, "#"
// comments, and every problem reported with its file and line.
package linefile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"mailguard/internal/fileerr"
	"mailguard/internal/safefile"
)

// Error is one problem at a line of a file: the one type every file
// mailguard reads reports with.
type Error = fileerr.Error

// MaxLine bounds one line, so a wrong file cannot make the reader buffer
// without limit.
const MaxLine = 64 << 10

// Read calls fn with the number and fields of every line that has any
// (comments removed), and returns every error fn returned, each placed at
// its line, joined.
func Read(name string, r io.Reader, fn func(line int, fields []string) error) error {
	var probs safefile.Problems
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), MaxLine)
	line := 0
	for sc.Scan() {
		line++
		if line == 1 && safefile.HasBOM(sc.Bytes()) {
			return &Error{File: name, Line: 1, Msg: safefile.BOMProblem}
		}
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		if fields := strings.Fields(text); len(fields) > 0 {
			if err := fn(line, fields); err != nil {
				probs.Add(&Error{File: name, Line: line, Msg: err.Error()})
			}
		}
	}
	if err := sc.Err(); err != nil {
		if !errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%s: %w", name, err)
		}
		probs.Add(&Error{File: name, Line: line + 1, Msg: fmt.Sprintf("line longer than %d bytes", MaxLine)})
	}
	return probs.Err(name)
}

// ReadFile is Read on a regular file of at most maxSize bytes (0: no
// bound), opened without blocking (see safefile).
func ReadFile(path string, maxSize int64, fn func(line int, fields []string) error) error {
	f, _, err := safefile.Open(path, safefile.Options{MaxSize: maxSize})
	if err != nil {
		return err
	}
	defer f.Close()
	return Read(path, safefile.Reader(f, maxSize, path), fn)
}
