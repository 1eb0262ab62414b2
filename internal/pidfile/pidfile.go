// Package pidfile keeps the daemon's process id, and the outcome of its
// latest reload, in files, so that `mailguard reload` signals the right
// instance and can say whether the reload worked.
package pidfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"mailguard/internal/safefile"
)

// Write records this process's id in path, replacing the file whole.
func Write(path string) error {
	return replace(path, strconv.Itoa(os.Getpid())+"\n")
}

// Remove deletes the pid file and the reload status, if they are ours.
func Remove(path string) {
	if pid, err := Read(path); err == nil && pid == os.Getpid() {
		os.Remove(path)
		os.Remove(statusPath(path))
	}
}

// Read returns the process id a pid file holds.
func Read(path string) (int, error) {
	b, err := safefile.ReadFile(path, 64)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s does not hold a process id", path)
	}
	return pid, nil
}

// Status is the outcome of the daemon's latest reload.
type Status struct {
	Seq     uint64 // counts reloads since the daemon started
	OK      bool
	Message string
}

// WriteStatus records a reload's outcome beside the pid file.
func WriteStatus(pidPath string, s Status) error {
	word := "failed"
	if s.OK {
		word = "ok"
	}
	msg := strings.ReplaceAll(s.Message, "\n", "; ")
	return replace(statusPath(pidPath), fmt.Sprintf("%d %s %s\n", s.Seq, word, msg))
}

// ReadStatus reads the latest reload's outcome; a missing file is Seq 0.
func ReadStatus(pidPath string) (Status, error) {
	b, err := safefile.ReadFile(statusPath(pidPath), 64<<10)
	if errors.Is(err, os.ErrNotExist) {
		return Status{}, nil
	}
	if err != nil {
		return Status{}, err
	}
	f := strings.SplitN(strings.TrimSpace(string(b)), " ", 3)
	seq, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil || len(f) < 2 {
		return Status{}, fmt.Errorf("%s: not a reload status", statusPath(pidPath))
	}
	s := Status{Seq: seq, OK: f[1] == "ok"}
	if len(f) == 3 {
		s.Message = f[2]
	}
	return s, nil
}

func statusPath(pidPath string) string { return pidPath + ".reload" }

// replace writes a file whole: in a temporary file beside it, renamed over
// it, so a reader never sees half of it.
func replace(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".mailguard-*")
	if err != nil {
		// Name the file the postmaster configured, not our temporary one.
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("cannot write %s: its folder %s does not exist", path, filepath.Dir(path))
		}
		return fmt.Errorf("cannot write %s: %w", path, errors.Unwrap(err))
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
