package maildir

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"mailguard/internal/safefile"
)

// Count sums the messages of a Maildir and its Maildir++ folders (the
// subdirectories whose names start with "."), in cur/ and new/. A file's
// size comes from the ",S=" field of its name when it has one (as Dovecot
// and Courier name files), else from stat. Only regular files count; links
// are not followed. ctx bounds the work.
func Count(ctx context.Context, dir string) (Totals, error) {
	var t Totals
	folders := []string{dir}
	entries, err := readDir(dir)
	if err != nil {
		return t, err
	}
	for _, e := range entries {
		if name := e.Name(); e.IsDir() && strings.HasPrefix(name, ".") && name != "." && name != ".." {
			folders = append(folders, filepath.Join(dir, name))
		}
	}
	for _, folder := range folders {
		for _, sub := range []string{"cur", "new"} {
			if err := ctx.Err(); err != nil {
				return t, err
			}
			if err := countDir(filepath.Join(folder, sub), &t); err != nil && !os.IsNotExist(err) {
				return t, err
			}
		}
	}
	return t, nil
}

// readDir lists a directory the user controls: opened without blocking and
// without following a link, so a FIFO or a link in a folder's place
// cannot stall or redirect the count.
func readDir(dir string) ([]os.DirEntry, error) {
	f, err := safefile.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.ReadDir(-1)
}

func countDir(dir string, t *Totals) error {
	entries, err := readDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		size, ok := sizeFromName(e.Name())
		if !ok {
			info, err := e.Info()
			if err != nil {
				continue // removed meanwhile
			}
			size = info.Size()
		}
		t.Bytes += size
		t.Count++
	}
	return nil
}

// sizeFromName reads the size from a name like "1700.M1P2.host,S=1234,W=1260:2,S".
func sizeFromName(name string) (int64, bool) {
	if i := strings.IndexByte(name, ':'); i >= 0 {
		name = name[:i]
	}
	for _, field := range strings.Split(name, ",")[1:] {
		if v, ok := strings.CutPrefix(field, "S="); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			return n, err == nil && n >= 0
		}
	}
	return 0, false
}
