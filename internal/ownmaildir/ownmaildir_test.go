package ownmaildir

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A copy goes through tmp/ into new/ with its size in its name, and
// nothing stays behind in tmp/.
func TestWriteOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "box")
	if err := Prepare(dir); err != nil {
		t.Fatal(err)
	}
	name := Name(time.Unix(1700000000, 5000), 7, "mx/1:a")
	if strings.ContainsAny(name, "/:") || !strings.HasPrefix(name, "1700000000.M5P") {
		t.Fatalf("name %q", name)
	}
	tmp, err := OpenDir(filepath.Join(dir, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(tmp)
	f, err := CreateIn(tmp, name)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("hello\r\n")
	f.Close()
	if _, err := CreateIn(tmp, name); err == nil {
		t.Fatal("an existing name was created again")
	}
	if err := Deliver(tmp, name, dir, 7); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "new", name+",S=7")); err != nil || string(b) != "hello\r\n" {
		t.Fatalf("delivered: %q %v", b, err)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
		t.Fatalf("left in tmp/: %v", left)
	}
}

// A folder that is a link, or writable by others, is refused by Prepare,
// Check and OpenDir alike.
func TestForeignFoldersRefused(t *testing.T) {
	root := t.TempDir()
	elsewhere := filepath.Join(root, "elsewhere")
	os.Mkdir(elsewhere, 0o700)
	link := filepath.Join(root, "box")
	os.Symlink(elsewhere, link)
	if err := Prepare(link); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("a linked Maildir: %v", err)
	}
	if err := Check(link); err == nil {
		t.Fatal("check passed a linked Maildir")
	}
	open := filepath.Join(root, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	if err := Prepare(open); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Fatalf("a world-writable Maildir: %v", err)
	}
	if err := Check(filepath.Join(root, "missing")); err != nil {
		t.Fatalf("check of a Maildir the daemon will create: %v", err)
	}
}
