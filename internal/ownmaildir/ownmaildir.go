// Package ownmaildir writes copies of other people's mail, once each, into
// a Maildir the daemon owns (capture's copies, outbreak's samples). Its
// folders must be the daemon's own: not links (a link would send the
// copies elsewhere), owned by the daemon's user, writable by no one else.
// Every copy opens its folders anew without following links and checks
// them on the open descriptor, then creates the file in tmp/, syncs it and
// moves it into new/ relative to those descriptors, so a folder swapped
// for a link after start-up is refused too, with no window between check
// and use.
package ownmaildir

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// OpenDir opens a folder of the Maildir for a copy, checked on the open
// descriptor.
func OpenDir(path string) (int, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		if err == syscall.ELOOP || err == syscall.ENOTDIR {
			return -1, fmt.Errorf("%s is not a directory (a link or a file): refused", path)
		}
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		syscall.Close(fd)
		return -1, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if err := ownDir(path, st); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

func ownDir(path string, st syscall.Stat_t) error {
	if uid := uint32(os.Geteuid()); st.Uid != uid {
		return fmt.Errorf("%s is owned by user %d, not by mailguard's user (%d): refused", path, st.Uid, uid)
	}
	if st.Mode&0o022 != 0 {
		return fmt.Errorf("%s is writable by group or others (mode %03o): refused", path, st.Mode&0o777)
	}
	return nil
}

// Prepare creates the Maildir's folders where missing (mode 0700) and
// checks every one of them.
func Prepare(dir string) error {
	for _, sub := range []string{"", "tmp", "new", "cur"} {
		path := filepath.Join(dir, sub)
		if err := os.Mkdir(path, 0o700); err != nil && !os.IsExist(err) {
			return err
		}
		fd, err := OpenDir(path)
		if err != nil {
			return err
		}
		syscall.Close(fd)
	}
	return nil
}

// CreateIn creates a new file, mode 0600, in the folder open as dirfd;
// an existing name or a link is refused.
func CreateIn(dirfd int, name string) (*os.File, error) {
	fd, err := syscall.Openat(dirfd, name, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "create", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// Check checks the folders that exist, creating nothing: what the daemon
// would refuse, check-config reports.
func Check(dir string) error {
	for _, sub := range []string{"", "tmp", "new", "cur"} {
		path := filepath.Join(dir, sub)
		if _, err := os.Lstat(path); os.IsNotExist(err) {
			continue // the daemon creates it
		}
		fd, err := OpenDir(path)
		if err != nil {
			return err
		}
		syscall.Close(fd)
	}
	return nil
}

// Name is a unique file name from the system alone: the time, the
// process, a counter of the caller's, and the host name (with "/" and
// ":", which Maildir names must not hold, escaped).
func Name(now time.Time, seq uint64, host string) string {
	host = strings.NewReplacer("/", "\\057", ":", "\\072").Replace(host)
	return fmt.Sprintf("%d.M%dP%dQ%d.%s", now.Unix(), now.Nanosecond()/1000, os.Getpid(), seq, host)
}

// Deliver moves the file name, written and synced in the tmp/ folder open
// as tmpDir, into dir's new/ folder, its size in the name (",S=SIZE"):
// write-once from there on.
func Deliver(tmpDir int, name, dir string, size int64) error {
	newDir, err := OpenDir(filepath.Join(dir, "new"))
	if err != nil {
		return err
	}
	defer syscall.Close(newDir)
	return syscall.Renameat(tmpDir, name, newDir, fmt.Sprintf("%s,S=%d", name, size))
}
