package outbreak

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// The samples Maildir holds worm copies sent to other people, so its
// folders must be the daemon's own, as the capture filter's are: not
// links, owned by the daemon's user, writable by no one else. Every copy
// opens its folders anew without following links and checks them on the
// open descriptor, then creates and moves the file relative to those
// descriptors.

func openOwnDir(path string) (int, error) {
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
	if uid := uint32(os.Geteuid()); st.Uid != uid {
		syscall.Close(fd)
		return -1, fmt.Errorf("%s is owned by user %d, not by mailguard's user (%d): refused", path, st.Uid, uid)
	}
	if st.Mode&0o022 != 0 {
		syscall.Close(fd)
		return -1, fmt.Errorf("%s is writable by group or others (mode %03o): refused", path, st.Mode&0o777)
	}
	return fd, nil
}

// prepareDirs creates the Maildir's folders where missing (mode 0700)
// and checks every one; with checkOnly it creates nothing and checks
// those that exist.
func prepareDirs(dir string, checkOnly bool) error {
	for _, sub := range []string{"", "tmp", "new", "cur"} {
		path := filepath.Join(dir, sub)
		if checkOnly {
			if _, err := os.Lstat(path); os.IsNotExist(err) {
				continue
			}
		} else if err := os.Mkdir(path, 0o700); err != nil && !os.IsExist(err) {
			return err
		}
		fd, err := openOwnDir(path)
		if err != nil {
			return err
		}
		syscall.Close(fd)
	}
	return nil
}

func createIn(dirfd int, name string) (*os.File, error) {
	fd, err := syscall.Openat(dirfd, name, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "create", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}
