package pidfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
)

// FuzzRead reads whatever a pid file and its reload status hold (another
// program's file at the configured path, a half-written one): no panic, a
// process id only when it is a positive number, and a status written by
// WriteStatus reads back as written (its line ends as "; ", the spaces
// at its end dropped) when it fits the reader's bound.
func FuzzRead(f *testing.F) {
	for _, s := range []string{"1234\n", " 42 ", "0\n", "-1\n", "12a\n", "", "99999999999999999999\n", "\x00"} {
		f.Add(s, "3 ok reloaded\n", uint64(3), true, "reloaded: 4 filters")
	}
	f.Add("7\n", "x failed\n", uint64(0), false, "config.toml:3: bad key\nconfig.toml:9: bad value")
	f.Add("7\n", "18446744073709551616 ok\n", uint64(1<<63), false, "  ")
	dir := f.TempDir()
	path := filepath.Join(dir, "mailguard.pid")
	f.Fuzz(func(t *testing.T, pidText, statusText string, seq uint64, ok bool, msg string) {
		if err := os.WriteFile(path, []byte(pidText), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(statusPath(path), []byte(statusText), 0o644); err != nil {
			t.Fatal(err)
		}
		if pid, err := Read(path); (err == nil) != (pid > 0) {
			t.Fatalf("%q: pid %d, error %v", pidText, pid, err)
		}
		ReadStatus(path)
		want := Status{Seq: seq, OK: ok, Message: msg}
		if err := WriteStatus(path, want); err != nil {
			t.Fatal(err)
		}
		got, err := ReadStatus(path)
		line := strings.ReplaceAll(msg, "\n", "; ")
		if len(line) > 60<<10 {
			return // past what ReadStatus reads
		}
		want.Message = strings.TrimRightFunc(line, unicode.IsSpace)
		if err != nil || got != want {
			t.Fatalf("wrote %+v, read %+v, %v", Status{Seq: seq, OK: ok, Message: msg}, got, err)
		}
	})
}
