// Package safefile opens the files mailguard reads that a user controls
// (a maildirsize, a Maildir) or that a mistake can break (the
// configuration, signature, user and blocklist files): never blocking (a
// FIFO or a device in the file's place would stall the caller's thread for
// good), checked on the open descriptor to be what was expected (no race
// between a check and the open), of bounded size, and read with a bound.
package safefile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// ErrNotRegular is returned for a path that is not a regular file (a FIFO,
// a device, a directory; with NoFollow, a symbolic link).
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge is returned for a file over the size allowed.
var ErrTooLarge = errors.New("file too large")

// Options say what to accept.
type Options struct {
	// MaxSize refuses a larger file; 0 is no bound.
	MaxSize int64
	// NoFollow refuses a symbolic link in the last component (a file a
	// user controls must not point the daemon elsewhere).
	NoFollow bool
}

// Open opens a regular file for reading without blocking and returns it
// with its FileInfo from the open descriptor.
func Open(path string, opts Options) (*os.File, os.FileInfo, error) {
	f, err := open(path, opts.NoFollow, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, &os.PathError{Op: "open", Path: path, Err: fmt.Errorf("%w (%s)", ErrNotRegular, kind(fi.Mode()))}
	}
	if opts.MaxSize > 0 && fi.Size() > opts.MaxSize {
		f.Close()
		return nil, nil, &os.PathError{Op: "open", Path: path, Err: fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, fi.Size(), opts.MaxSize)}
	}
	return f, fi, nil
}

// ReadFile reads a whole regular file of at most max bytes (0: no bound).
func ReadFile(path string, max int64) ([]byte, error) {
	f, _, err := Open(path, Options{MaxSize: max})
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAll(f, max, path)
}

// readAll reads f, refusing more than max bytes (0: no bound): the file
// may have grown since Open checked its size.
func readAll(f io.Reader, max int64, path string) ([]byte, error) {
	if max <= 0 {
		return io.ReadAll(f)
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(data)) > max {
		err = &os.PathError{Op: "read", Path: path, Err: fmt.Errorf("%w: more than %d bytes", ErrTooLarge, max)}
	}
	return data, err
}

// Reader wraps an opened file so reading it stops with ErrTooLarge past
// max bytes, for parsers that stream.
func Reader(f io.Reader, max int64, path string) io.Reader {
	if max <= 0 {
		return f
	}
	return &boundedReader{r: io.LimitReader(f, max+1), left: max + 1, max: max, path: path}
}

type boundedReader struct {
	r         io.Reader
	left, max int64
	path      string
}

func (b *boundedReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.left -= int64(n)
	if b.left <= 0 {
		return n, &os.PathError{Op: "read", Path: b.path, Err: fmt.Errorf("%w: more than %d bytes", ErrTooLarge, b.max)}
	}
	return n, err
}

// OpenDir opens a directory without blocking and without following a
// symbolic link in the last component.
func OpenDir(path string) (*os.File, error) {
	return open(path, true, syscall.O_DIRECTORY)
}

func open(path string, noFollow bool, extra int) (*os.File, error) {
	flags := syscall.O_RDONLY | syscall.O_NONBLOCK | syscall.O_CLOEXEC | extra
	if noFollow {
		flags |= syscall.O_NOFOLLOW
	}
	for {
		fd, err := syscall.Open(path, flags, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			if noFollow && err == syscall.ELOOP {
				err = fmt.Errorf("%w (a symbolic link)", ErrNotRegular)
			}
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return os.NewFile(uintptr(fd), path), nil
	}
}

func kind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeDevice != 0, m&os.ModeCharDevice != 0:
		return "a device"
	case m.IsDir():
		return "a directory"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	}
	return m.String()
}

// BOMProblem is what every reader of mailguard's text files says of a file
// that starts with a UTF-8 byte-order mark: refused the same way
// everywhere, since a mark glued to the first name or address would
// silently make that first entry never match.
const BOMProblem = "the file starts with a UTF-8 byte-order mark: save it without one"

// HasBOM reports whether text starts with a UTF-8 byte-order mark.
func HasBOM(text []byte) bool {
	return len(text) >= 3 && text[0] == 0xef && text[1] == 0xbb && text[2] == 0xbf
}

// MaxProblems bounds the problems one file reports: a wrong file (a binary,
// a file of another kind) would otherwise give one per line, a log line
// and a memory use as large as the file.
const MaxProblems = 20

// Problems collects a file's problems up to MaxProblems and counts the
// rest.
type Problems struct {
	Errs []error
	More int
}

// Add records a problem.
func (p *Problems) Add(err error) {
	if len(p.Errs) < MaxProblems {
		p.Errs = append(p.Errs, err)
		return
	}
	p.More++
}

// Err joins the problems, ending with "and N more" when some were left out.
func (p *Problems) Err(file string) error {
	if p.More > 0 {
		return errors.Join(append(p.Errs, fmt.Errorf("%s: and %d more problems", file, p.More))...)
	}
	return errors.Join(p.Errs...)
}
