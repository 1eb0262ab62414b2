// Package linefile reads the simple line-oriented files postmasters keep
// (the user directory, sender blocklists): blank-separated fields, "#"
// comments, and every problem reported with its file and line.
package linefile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Error is one problem at a line of a file.
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// MaxLine bounds one line, so a wrong file cannot make the reader buffer
// without limit.
const MaxLine = 64 << 10

// Read calls fn with the number and fields of every line that has any
// (comments removed), and returns every error fn returned, each placed at
// its line, joined.
func Read(name string, r io.Reader, fn func(line int, fields []string) error) error {
	var errs []error
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), MaxLine)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		if fields := strings.Fields(text); len(fields) > 0 {
			if err := fn(line, fields); err != nil {
				errs = append(errs, &Error{File: name, Line: line, Msg: err.Error()})
			}
		}
	}
	if err := sc.Err(); err != nil {
		if !errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%s: %w", name, err)
		}
		errs = append(errs, &Error{File: name, Line: line + 1, Msg: fmt.Sprintf("line longer than %d bytes", MaxLine)})
	}
	return errors.Join(errs...)
}

// ReadFile is Read on a file.
func ReadFile(path string, fn func(line int, fields []string) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return Read(path, f, fn)
}
