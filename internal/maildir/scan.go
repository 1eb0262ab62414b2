package maildir

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// DefaultMaxEntries bounds the directory entries one count reads, over all
// of a Maildir's folders: a mailbox past it is not counted (its recipients
// go unchecked) rather than holding a count slot for long.
const DefaultMaxEntries = 2_000_000

var (
	// ErrLink is a Maildir, folder, cur/ or new/ that is a symbolic link
	// (or was swapped for one while being opened): never followed.
	ErrLink = errors.New("a symbolic link, not followed")
	// ErrTooManyEntries is a Maildir with more entries than a count reads.
	ErrTooManyEntries = errors.New("more directory entries than a count reads")
)

// Count sums the messages of a Maildir and its Maildir++ folders (the
// subdirectories whose names start with "."), in cur/ and new/, reading
// at most DefaultMaxEntries entries. See CountLimit.
func Count(ctx context.Context, dir string) (Totals, error) {
	return CountLimit(ctx, dir, DefaultMaxEntries)
}

// CountLimit is Count reading at most maxEntries directory entries.
//
// A file's size comes from the ",S=" field of its name when it has one (as
// Dovecot and Courier name files), else from lstat. Only regular files
// count. Everything is opened below dir's parent through os.Root, one
// component at a time, and a component that is a link (the Maildir
// itself, a folder, cur/, new/) is refused, not followed: the user owns
// the Maildir and may put a link anywhere in it. Directories are read in
// batches (readBatchBytes), checking ctx between batches, so a count
// holds little memory and stops when ctx ends.
func CountLimit(ctx context.Context, dir string, maxEntries int64) (Totals, error) {
	c := counter{ctx: ctx, left: maxEntries, max: maxEntries}
	parent, err := os.OpenRoot(filepath.Dir(dir))
	if err != nil {
		return c.t, err
	}
	defer parent.Close()
	top, err := openBelow(parent, filepath.Base(dir))
	if err != nil {
		return c.t, err
	}
	defer top.Close()
	if err := c.folder(top); err != nil {
		return c.t, err
	}
	err = c.each(top, func(name []byte, typ fs.FileMode) error {
		if !typ.IsDir() || name[0] != '.' {
			return nil
		}
		sub, err := openBelow(top, string(name))
		if err != nil {
			return err
		}
		defer sub.Close()
		return c.folder(sub)
	})
	return c.t, err
}

type counter struct {
	ctx  context.Context
	left int64 // entries still to read
	max  int64
	t    Totals
}

// folder counts one folder's cur/ and new/.
func (c *counter) folder(folder *os.Root) error {
	for _, sub := range []string{"cur", "new"} {
		d, err := openBelow(folder, sub)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		err = c.each(d, func(name []byte, typ fs.FileMode) error {
			if !typ.IsRegular() || name[0] == '.' {
				return nil
			}
			size, ok := sizeFromName(name)
			if !ok {
				info, err := d.Lstat(string(name))
				if err != nil {
					return nil // removed meanwhile
				}
				size = info.Size()
			}
			c.t.Bytes += size
			c.t.Count++
			return nil
		})
		d.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// each calls f for every entry of the directory r (but "." and ".."),
// read readBatchBytes at a time into one buffer, within the count's
// context and entry budget. Names are handed over as bytes, valid during
// the call. The entries are read with getdents, not File.ReadDir: in a
// Root, ReadDir lstats every entry and allocates for it (measured: 40%
// of the memory and a system call per message).
func (c *counter) each(r *os.Root, f func(name []byte, typ fs.FileMode) error) error {
	d, err := r.Open(".")
	if err != nil {
		return err
	}
	defer d.Close()
	raw, err := d.SyscallConn()
	if err != nil {
		return err
	}
	buf := make([]byte, readBatchBytes)
	for {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		var n int
		var readErr error
		if err := raw.Read(func(fd uintptr) bool {
			for {
				n, readErr = syscall.ReadDirent(int(fd), buf)
				if readErr != syscall.EINTR {
					return true
				}
			}
		}); err != nil {
			return err
		}
		if readErr != nil {
			return &fs.PathError{Op: "getdents", Path: filepath.Clean(d.Name()), Err: readErr}
		}
		if n <= 0 {
			return nil
		}
		for rec := buf[:n]; len(rec) > 0; {
			name, typ, next, ok := parseDirent(rec)
			if !ok {
				return &fs.PathError{Op: "getdents", Path: filepath.Clean(d.Name()), Err: errors.New("a malformed directory entry")}
			}
			rec = next
			if len(name) == 0 || string(name) == "." || string(name) == ".." {
				continue
			}
			if c.left--; c.left < 0 {
				return fmt.Errorf("%s: %w (%d)", filepath.Clean(d.Name()), ErrTooManyEntries, c.max)
			}
			if typ == ^fs.FileMode(0) { // the file system did not say
				info, err := r.Lstat(string(name))
				if err != nil {
					continue // removed meanwhile
				}
				typ = info.Mode().Type()
			}
			if err := f(name, typ); err != nil {
				return err
			}
		}
	}
}

// readBatchBytes is the buffer one directory is read into: ~80 entries of
// a Dovecot-named Maildir at a time, the memory a count holds whatever
// the folder's size.
const readBatchBytes = 8 << 10

// parseDirent reads one linux_dirent64 record: d_ino (8 bytes), d_off
// (8), d_reclen (2), d_type (1), then the name, NUL-terminated. typ is
// ^0 for DT_UNKNOWN.
func parseDirent(buf []byte) (name []byte, typ fs.FileMode, rest []byte, ok bool) {
	const nameOff = 19
	if len(buf) < nameOff {
		return nil, 0, nil, false
	}
	reclen := int(binary.NativeEndian.Uint16(buf[16:18]))
	if reclen < nameOff || reclen > len(buf) {
		return nil, 0, nil, false
	}
	name = buf[nameOff:reclen]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	switch buf[18] {
	case syscall.DT_REG:
		typ = 0
	case syscall.DT_DIR:
		typ = fs.ModeDir
	case syscall.DT_LNK:
		typ = fs.ModeSymlink
	case syscall.DT_UNKNOWN:
		typ = ^fs.FileMode(0)
	default:
		typ = fs.ModeIrregular
	}
	return name, typ, buf[reclen:], true
}

// openBelow opens the directory name (one component) in parent, refusing
// a link: the entry is looked at without following it, opened as a
// directory (so a FIFO swapped in cannot block), and must be the very
// directory looked at.
func openBelow(parent *os.Root, name string) (*os.Root, error) {
	want, err := parent.Lstat(name)
	if err != nil {
		return nil, err
	}
	if want.Mode()&fs.ModeSymlink != 0 {
		return nil, &fs.PathError{Op: "open", Path: filepath.Join(parent.Name(), name), Err: ErrLink}
	}
	if !want.IsDir() {
		return nil, &fs.PathError{Op: "open", Path: filepath.Join(parent.Name(), name), Err: fmt.Errorf("a %s, not a directory", want.Mode().Type())}
	}
	// "name/.": name is opened as a directory, never as a file.
	sub, err := parent.OpenRoot(name + "/.")
	if err != nil {
		return nil, err
	}
	if got, err := sub.Stat("."); err != nil || !os.SameFile(want, got) {
		sub.Close()
		return nil, &fs.PathError{Op: "open", Path: filepath.Join(parent.Name(), name), Err: ErrLink}
	}
	return sub, nil
}

// sizeFromName reads the size from a name like "1700.M1P2.host,S=1234,W=1260:2,S".
func sizeFromName(name []byte) (int64, bool) {
	if i := bytes.IndexByte(name, ':'); i >= 0 {
		name = name[:i]
	}
	i := bytes.IndexByte(name, ',')
	if i < 0 {
		return 0, false
	}
	for rest := name[i+1:]; ; {
		field, next, more := bytes.Cut(rest, []byte{','})
		if v, ok := bytes.CutPrefix(field, []byte("S=")); ok {
			return parseSize(v)
		}
		if !more {
			return 0, false
		}
		rest = next
	}
}

// parseSize is a non-negative decimal, without allocating.
func parseSize(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
