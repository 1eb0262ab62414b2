package capture

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A capture Maildir that is a link, has a linked folder, is not the
// daemon's own or is writable by others is refused at start.
func TestCaptureDirRefused(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	elsewhere := t.TempDir()
	cases := map[string]struct {
		prepare func(dir string)
		want    string
	}{
		"dir is a link": {func(dir string) { os.Symlink(elsewhere, dir) }, "is not a directory (a link or a file)"},
		"tmp is a link": {func(dir string) {
			os.Mkdir(dir, 0o700)
			os.Symlink(elsewhere, filepath.Join(dir, "tmp"))
		}, "tmp is not a directory"},
		"new is group-writable": {func(dir string) {
			os.MkdirAll(filepath.Join(dir, "new"), 0o700)
			os.Chmod(filepath.Join(dir, "new"), 0o770)
		}, "writable by group or others (mode 770)"},
		"dir owned by another user": {func(dir string) {
			os.Mkdir(dir, 0o700)
			os.Chown(dir, 65534, 65534)
		}, "is owned by user 65534"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if name == "dir owned by another user" && os.Geteuid() != 0 {
				if os.Getenv("CI") != "" {
					t.Fatal("needs root to give a folder away, as CI runs")
				}
				t.Skip("needs root to give a folder away")
			}
			dir := filepath.Join(t.TempDir(), "capture")
			c.prepare(dir)
			_, err := New(Options{Dir: dir, Switch: filepath.Join(dir, "on"), Log: log})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}

// A folder swapped for a link after start-up: the copy is refused (and the
// mail flows), nothing lands elsewhere.
func TestCaptureFolderSwappedForLink(t *testing.T) {
	for _, folder := range []string{"tmp", "new"} {
		t.Run(folder, func(t *testing.T) {
			e := setup(t, Options{})
			e.switchOn(t)
			elsewhere := t.TempDir()
			os.Rename(filepath.Join(e.dir, folder), filepath.Join(e.dir, folder+".old"))
			os.Symlink(elsewhere, filepath.Join(e.dir, folder))
			if v := e.send("a@example.org", []string{"u@example.edu"}, []byte("hello\r\n"), true); v.Final() {
				t.Fatalf("verdict %v", v)
			}
			if entries, _ := os.ReadDir(elsewhere); len(entries) != 0 {
				t.Fatalf("a copy landed behind the link: %v", entries)
			}
			if e.f.Failed.Load() != 1 {
				t.Fatalf("failed copies %d", e.f.Failed.Load())
			}
			if tmp, _ := os.ReadDir(filepath.Join(e.dir, "tmp.old")); folder == "tmp" && len(tmp) != 0 {
				t.Fatalf("%d partial files left", len(tmp))
			}
		})
	}
}

// Only a regular file turns capturing on.
func TestSwitchMustBeARegularFile(t *testing.T) {
	e := setup(t, Options{})
	for name, make := range map[string]func() error{
		"FIFO":      func() error { return syscall.Mkfifo(e.sw, 0o600) },
		"directory": func() error { return os.Mkdir(e.sw, 0o700) },
		"link":      func() error { return os.Symlink("/etc/passwd", e.sw) },
	} {
		os.RemoveAll(e.sw)
		if err := make(); err != nil {
			t.Fatal(err)
		}
		e.now = e.now.Add(2e9)
		if r, _ := e.f.Stages(); r != 0 {
			t.Errorf("a %s as the switch turned capturing on", name)
		}
	}
}
