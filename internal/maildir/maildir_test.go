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
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestParseMaildirsize(t *testing.T) {
	cases := []struct {
		name, in string
		def      Definition
		totals   Totals
		err      bool
	}{
		{"dovecot", "1048576S,100C\n1200 1\n3400 2\n", Definition{1 << 20, 100, true}, Totals{4600, 3}, false},
		{"removals", "1000S\n500 2\n-200 -1\n", Definition{1000, 0, true}, Totals{300, 1}, false},
		{"count only", "10C\n1 1\n", Definition{0, 10, true}, Totals{1, 1}, false},
		{"unlimited", "0S,0C\n99 1\n", Definition{0, 0, true}, Totals{99, 1}, false},
		{"no definition", "\n10 1\n", Definition{}, Totals{10, 1}, false},
		{"no trailing newline", "5S\n1 1", Definition{5, 0, true}, Totals{1, 1}, false},
		{"negative total", "1000S\n-5 -1\n", Definition{}, Totals{}, true},
		{"garbage line", "1000S\nhello world\n", Definition{}, Totals{}, true},
		{"three fields", "1000S\n1 2 3\n", Definition{}, Totals{}, true},
		{"bad definition", "lots\n1 1\n", Definition{}, Totals{}, true},
		{"overflow", "1000S\n9223372036854775807 1\n1 1\n", Definition{}, Totals{}, true},
		{"huge number", "1000S\n99999999999999999999 1\n", Definition{}, Totals{}, true},
		{"empty", "", Definition{}, Totals{}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			def, totals, err := ParseMaildirsize(strings.NewReader(c.in))
			if (err != nil) != c.err || def != c.def || totals != c.totals {
				t.Errorf("got %+v %+v %v", def, totals, err)
			}
		})
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o700)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// mailbox makes a Maildir with messages in INBOX and a folder: sizes from
// names where Dovecot puts them, from stat otherwise.
func mailbox(t *testing.T) string {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "cur", "1.M1.host,S=1000,W=1020:2,S"), "x")
	write(t, filepath.Join(dir, "new", "2.M2.host,S=2000"), "x")
	write(t, filepath.Join(dir, "new", "3.M3.host"), strings.Repeat("y", 300))
	write(t, filepath.Join(dir, ".Sent", "cur", "4.M4.host,S=4000:2,S"), "x")
	write(t, filepath.Join(dir, "tmp", "5.M5.host,S=99999"), "x") // being delivered: not counted
	write(t, filepath.Join(dir, "dovecot-uidlist"), "3 V1\n")
	os.Symlink("/etc/passwd", filepath.Join(dir, "cur", "6.link,S=12345"))
	return dir
}

func TestCount(t *testing.T) {
	got, err := Count(context.Background(), mailbox(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Totals{7300, 4}); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// A link anywhere in the Maildir (the Maildir itself, cur/ or new/) is
// refused, not followed: the user owns the Maildir and could point the
// count at a huge or endless tree elsewhere. A link in a folder's place is
// no folder.
func TestCountRefusesLinks(t *testing.T) {
	elsewhere := mailbox(t) // 4 messages, 7300 bytes
	for _, c := range []struct {
		name string
		link func(dir string)
	}{
		{"maildir", func(dir string) { os.RemoveAll(dir); os.Symlink(elsewhere, dir) }},
		{"cur", func(dir string) {
			os.RemoveAll(filepath.Join(dir, "cur"))
			os.Symlink(filepath.Join(elsewhere, "cur"), filepath.Join(dir, "cur"))
		}},
		{"new", func(dir string) {
			os.RemoveAll(filepath.Join(dir, "new"))
			os.Symlink(filepath.Join(elsewhere, "new"), filepath.Join(dir, "new"))
		}},
		{"folder's cur", func(dir string) {
			os.RemoveAll(filepath.Join(dir, ".Sent", "cur"))
			os.Symlink(filepath.Join(elsewhere, "cur"), filepath.Join(dir, ".Sent", "cur"))
		}},
		{"link inside to cur", func(dir string) {
			os.RemoveAll(filepath.Join(dir, ".Sent", "cur"))
			os.Symlink("../cur", filepath.Join(dir, ".Sent", "cur"))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := mailbox(t)
			c.link(dir)
			if got, err := Count(context.Background(), dir); !errors.Is(err, ErrLink) {
				t.Fatalf("got %+v, %v; want the link refused", got, err)
			}
		})
	}
	// A folder that is a link is not a folder: not counted.
	dir := mailbox(t)
	os.Symlink(filepath.Join(elsewhere, ".Sent"), filepath.Join(dir, ".Linked"))
	if got, err := Count(context.Background(), dir); err != nil || got != (Totals{7300, 4}) {
		t.Fatalf("with a linked folder: %+v %v", got, err)
	}
}

// cancelAfter is a context whose Err turns to Canceled after n calls: a
// count that checks it only once per folder runs to the folder's end.
type cancelAfter struct {
	context.Context
	n atomic.Int64
}

func (c *cancelAfter) Err() error {
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

func TestCountStopsWithItsContext(t *testing.T) {
	dir := t.TempDir()
	for i := range 2000 {
		write(t, filepath.Join(dir, "cur", fmt.Sprintf("%d.M.host,S=10", i)), "")
	}
	ctx := &cancelAfter{Context: context.Background()}
	ctx.n.Store(3)
	got, err := Count(ctx, dir)
	if !errors.Is(err, context.Canceled) || got.Count >= 2000 {
		t.Fatalf("a count whose context ended went on: %+v %v", got, err)
	}
	t.Logf("stopped after %d of 2000 messages", got.Count)
}

func TestCountEntryBound(t *testing.T) {
	dir := t.TempDir()
	for i := range 500 {
		write(t, filepath.Join(dir, "new", fmt.Sprintf("%d.M.host,S=10", i)), "")
	}
	// 501 entries: new/ and its 500 messages.
	if got, err := CountLimit(context.Background(), dir, 500); !errors.Is(err, ErrTooManyEntries) {
		t.Fatalf("past the bound: %+v %v", got, err)
	}
	if got, err := CountLimit(context.Background(), dir, 501); err != nil || got.Count != 500 {
		t.Fatalf("at the bound: %+v %v", got, err)
	}
}

func TestSizeFromName(t *testing.T) {
	for name, want := range map[string]int64{
		"1.M1.host,S=1000,W=1020:2,S":      1000,
		"1.M1.host,W=1020,S=7:2,S":         7,
		"1.M1.host,S=:2,S":                 -1,
		"1.M1.host,S=-5":                   -1,
		"1.M1.host,S=12x":                  -1,
		"1.M1.host:2,S=99":                 -1, // flags, not the name
		"1.M1.host":                        -1,
		"1.M1.host,S=99999999999999999999": -1,
	} {
		got, ok := sizeFromName([]byte(name))
		if !ok {
			got = -1
		}
		if got != want {
			t.Errorf("%s: %d, want %d", name, got, want)
		}
	}
}

// snapshot lists every path with its size and mtime, to prove a reader
// changed nothing.
func snapshot(t *testing.T, dir string) string {
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if p == dir {
			return nil // the test itself adds and removes maildirsize here
		}
		info, _ := os.Lstat(p)
		fmt.Fprintf(&b, "%s %d %v %v\n", p, info.Size(), info.ModTime().UnixNano(), info.Mode())
		return nil
	})
	return b.String()
}

func TestUsageReader(t *testing.T) {
	dir := mailbox(t)
	now := time.Now()
	r := &UsageReader{Now: func() time.Time { return now }, Wait: 5 * time.Second}
	before := snapshot(t, dir)

	// No maildirsize: the messages are counted.
	u, ok := r.Usage(dir)
	if !ok || !u.FromScan || u.Bytes != 7300 || u.Count != 4 || u.Def.Set {
		t.Fatalf("counted usage %+v %v", u, ok)
	}

	// maildirsize is trusted, and cached by size and mtime.
	size := filepath.Join(dir, "maildirsize")
	write(t, size, "10000S,50C\n7000 3\n")
	u, ok = r.Usage(dir)
	if !ok || u.FromScan || u.Bytes != 7000 || u.Def.Bytes != 10000 || u.Def.Count != 50 {
		t.Fatalf("file usage %+v %v", u, ok)
	}
	// Rewrite with the same size and mtime: the cache answers.
	mtime := mustStat(t, size).ModTime()
	write(t, size, "10000S,50C\n8000 3\n")
	os.Chtimes(size, mtime, mtime)
	if u, _ = r.Usage(dir); u.Bytes != 7000 {
		t.Fatalf("file re-read although unchanged: %+v", u)
	}
	// A new line (Dovecot appending): re-read.
	write(t, size, "10000S,50C\n8000 3\n100 1\n")
	if u, _ = r.Usage(dir); u.Bytes != 8100 {
		t.Fatalf("change not seen: %+v", u)
	}

	// Over quota and older than 15 minutes: stale, recounted, definition kept.
	write(t, size, "5000S\n9000 3\n")
	old := now.Add(-20 * time.Minute)
	os.Chtimes(size, old, old)
	u, ok = r.Usage(dir)
	if !ok || !u.FromScan || u.Bytes != 7300 || u.Def.Bytes != 5000 {
		t.Fatalf("stale file: %+v %v", u, ok)
	}

	// Garbage: recounted. 5120 bytes and more: recounted without parsing.
	write(t, size, "garbage\x00\xff\n")
	if u, ok = r.Usage(dir); !ok || !u.FromScan || u.Def.Set {
		t.Fatalf("garbage: %+v %v", u, ok)
	}
	write(t, size, "1000S\n"+strings.Repeat("1 1\n", 300000))
	if u, ok = r.Usage(dir); !ok || !u.FromScan || u.Def.Bytes != 1000 || u.Bytes != 7300 {
		t.Fatalf("oversized file: %+v %v", u, ok)
	}

	os.Remove(size)
	if after := snapshot(t, dir); before != after {
		t.Errorf("the reader changed the Maildir:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestSlowCountDoesNotBlock(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 2000; i++ {
		write(t, filepath.Join(dir, "cur", fmt.Sprintf("%d.M.host,S=10", i)), "")
	}
	r := &UsageReader{Wait: time.Nanosecond}
	start := time.Now()
	if _, ok := r.Usage(dir); ok {
		t.Log("count finished within a nanosecond (fast machine)")
	}
	if waited := time.Since(start); waited > time.Second {
		t.Fatalf("a count in progress held the caller for %v", waited)
	}
	r.Wait = 10 * time.Second
	if u, ok := r.Usage(dir); !ok || u.Count != 2000 || u.Bytes != 20000 {
		t.Fatalf("count result %+v %v", u, ok)
	}
}

func TestMissingMaildir(t *testing.T) {
	r := &UsageReader{}
	if u, ok := r.Usage(filepath.Join(t.TempDir(), "nope")); ok {
		t.Fatalf("missing Maildir gave usage %+v", u)
	}
}

func mustStat(t *testing.T, p string) os.FileInfo {
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func FuzzParseMaildirsize(f *testing.F) {
	f.Add("1048576S,100C\n1200 1\n-1200 -1\n")
	f.Add("0S\n")
	f.Add("S,C\n1\n")
	f.Fuzz(func(t *testing.T, in string) {
		def, totals, err := ParseMaildirsize(strings.NewReader(in))
		if err != nil {
			return
		}
		if totals.Bytes < 0 || totals.Count < 0 || def.Bytes < 0 || def.Count < 0 {
			t.Fatalf("negative result accepted: %+v %+v", def, totals)
		}
	})
}

// parseDirent reads what the kernel wrote, but the names in it are the
// user's: whatever the bytes, it neither panics nor reads past them.
func FuzzParseDirent(f *testing.F) {
	rec := make([]byte, 24)
	binary.NativeEndian.PutUint16(rec[16:], 24)
	rec[18] = syscall.DT_REG
	copy(rec[19:], "1,S=5\x00")
	f.Add(rec)
	f.Add([]byte{})
	f.Add(make([]byte, 19))
	f.Fuzz(func(t *testing.T, buf []byte) {
		for n := 0; len(buf) > 0 && n < 1000; n++ {
			name, _, rest, ok := parseDirent(buf)
			if !ok {
				return
			}
			if len(rest) >= len(buf) || bytes.IndexByte(name, 0) >= 0 {
				t.Fatalf("no progress, or a NUL in %q", name)
			}
			sizeFromName(name)
			buf = rest
		}
	})
}
