// Package fileerr is the one error type for a problem in a file a
// postmaster edits (the config, signature files, user directories,
// blocklists, hash lists): it names the file and, where there is one, the
// line, so every such message reads "FILE:LINE: what is wrong" and every
// caller finds it with one errors.As.
package fileerr

import "fmt"

// Error is one problem at a line of a file.
type Error struct {
	File string
	Line int // 0 when the problem has no line (a missing file)
	Msg  string
}

func (e *Error) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// At is an Error at file:line.
func At(file string, line int, format string, args ...any) *Error {
	return &Error{File: file, Line: line, Msg: fmt.Sprintf(format, args...)}
}
