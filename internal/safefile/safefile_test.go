package safefile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestOpenRefusesWhatIsNotARegularFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	syscall.Mkfifo(fifo, 0o600)
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("0123456789"), 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(file, link)
	cases := []struct {
		path string
		opts Options
		want error
		text string
	}{
		{fifo, Options{}, ErrNotRegular, "a FIFO"},
		{dir, Options{}, ErrNotRegular, "a directory"},
		{"/dev/null", Options{}, ErrNotRegular, "a device"},
		{link, Options{NoFollow: true}, ErrNotRegular, "a symbolic link"},
		{file, Options{MaxSize: 5}, ErrTooLarge, "10 bytes, at most 5"},
	}
	for _, c := range cases {
		_, _, err := Open(c.path, c.opts)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
			t.Errorf("%s: %v, want %v (%s)", c.path, err, c.want, c.text)
		}
	}
	f, fi, err := Open(link, Options{MaxSize: 10})
	if err != nil || fi.Size() != 10 {
		t.Fatalf("a link followed by default: %v", err)
	}
	f.Close()
	if _, err := ReadFile(file, 9); !errors.Is(err, ErrTooLarge) {
		t.Errorf("ReadFile over the bound: %v", err)
	}
	if data, err := ReadFile(file, 10); err != nil || string(data) != "0123456789" {
		t.Errorf("ReadFile: %q %v", data, err)
	}
	// A file that grows after the size check is still bounded.
	if _, err := io.ReadAll(Reader(strings.NewReader("0123456789"), 5, "grown")); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Reader past the bound: %v", err)
	}
	if _, err := OpenDir(fifo); err == nil {
		t.Error("OpenDir opened a FIFO")
	}
}

func TestProblemsBounded(t *testing.T) {
	var p Problems
	for i := 0; i < 1000; i++ {
		p.Add(fmt.Errorf("line %d: bad", i))
	}
	err := p.Err("f")
	if lines := strings.Count(err.Error(), "\n") + 1; lines != MaxProblems+1 || !strings.HasSuffix(err.Error(), "f: and 980 more problems") {
		t.Fatalf("%d lines:\n%v", lines, err)
	}
	if !HasBOM([]byte("\ufeffx")) || HasBOM([]byte("x")) {
		t.Fatal("HasBOM")
	}
}
