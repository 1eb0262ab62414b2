package e2e

// Faults of the files and disks the daemon writes and reads.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestFaultCaptureDiskFills: capture copies every message, refused ones
// too, into a 1 MB tmpfs of its own. A copy that fills the disk midway
// is lost, its partial file removed (which frees the space again: the
// next small copy is written); with the disk full, no copy is written.
// Throughout, every message gets the verdict it would get without
// capture, and the daemon runs on; with room again, copies resume.
func TestFaultCaptureDiskFills(t *testing.T) {
	dir := t.TempDir()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("mounting a tmpfs needs root")
		}
		t.Skip("mounting a tmpfs needs root")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	copies := filepath.Join(dir, "maildir")
	d := startFaultDaemon(t, "filters = [\"virus\", \"capture\"]\n", `[virus]
signatures = "signatures"
[capture]
switch = "capture.on"
dir = "`+copies+`"
include_rejected = true
`, map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n", "capture.on": ""})
	line := "R0lGODlhAQABAIAAAP8AAAAAACwAAAAAAQABAAACAkQBADsAbcdefghijklmnopqrstuvwxyz0123\r\n"
	small := strings.Repeat(line, 100) + "END\r\n"
	large := strings.Repeat(line, 4000) + "END\r\n" // 312 KB
	worm := "x\r\n" + sobig + "\r\n"
	written := func() int {
		entries, err := os.ReadDir(filepath.Join(copies, "new"))
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	noPartials := func(what string) {
		t.Helper()
		if tmp, _ := os.ReadDir(filepath.Join(copies, "tmp")); len(tmp) != 0 {
			t.Errorf("%s: %d partial copies left in tmp/", what, len(tmp))
		}
	}
	failed := func() int {
		return int(d.metrics(t)[`mailguard_capture_writes_total{result="failed"}`])
	}
	expectVerdict(t, d.port, "192.0.2.1", small, "")
	expectVerdict(t, d.port, "192.0.2.1", worm, "550 5.7.0 VIRUS FOUND")
	if n := written(); n != 2 {
		t.Fatalf("%d copies with room on the disk, want 2", n)
	}
	base := d.warmUsage(t, 4)

	// Fill the disk but for 100 KB: the large copy fills it midway.
	filler := filepath.Join(dir, "filler")
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int(st.Bavail) * int(st.Bsize)
	if err := os.WriteFile(filler, make([]byte, free-100<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	before := written()
	expectVerdict(t, d.port, "192.0.2.2", large, "")
	noPartials("a copy that filled the disk")
	if n := failed(); n != 1 {
		t.Errorf("%d failed copies counted, want 1", n)
	}
	expectVerdict(t, d.port, "192.0.2.3", small, "")
	if n := written(); n != before+1 {
		t.Errorf("after a failed copy, a small one that fits: %d copies written, want %d", n-before, 1)
	}

	// Full: nothing is copied, nothing changes a verdict.
	f, err := os.OpenFile(filler, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 1<<20)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the disk: %v", err)
	}
	f.Close()
	before = written()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, want := small, ""
			if i%2 == 1 {
				body, want = worm, "550 5.7.0 VIRUS FOUND"
			}
			if r, err := oneMessage(d.port, fmt.Sprintf("192.0.2.%d", 10+i), body); err != nil || want == "" && r != "" || !strings.HasPrefix(r, want) {
				t.Errorf("with the disk full: %q %v, want %q", r, err, want)
			}
		}()
	}
	wg.Wait()
	noPartials("the disk full")
	if n := written(); n != before {
		t.Errorf("%d copies written to a full disk", n-before)
	}
	if n := failed(); n != 5 {
		t.Errorf("%d failed copies counted, want 5", n)
	}
	if l := d.lines("capture:", "message not copied, mail flows on", "no space left on device"); len(l) != 5 {
		t.Errorf("%d log lines say a copy was lost to a full disk, want 5:\n%s", len(l), d.logs)
	}

	// Room again: copies resume, whole.
	os.Remove(filler)
	before = written()
	expectVerdict(t, d.port, "192.0.2.20", large, "")
	if n := written(); n != before+1 {
		t.Fatalf("with room again, %d copies written, want 1", n-before)
	}
	entries, _ := os.ReadDir(filepath.Join(copies, "new"))
	latest := ""
	for _, e := range entries {
		if b, err := os.ReadFile(filepath.Join(copies, "new", e.Name())); err == nil && strings.Contains(string(b), "192.0.2.20") {
			latest = string(b)
		}
	}
	if !strings.HasSuffix(latest, large) {
		t.Errorf("the copy after the disk had room again is not whole (%d bytes)", len(latest))
	}
	noPartials("room again")
	t.Logf("before %v, after %v", base, d.settle(t, base, 2))
	d.stop(t)
}

// TestFaultGarbageSignaturesThenSIGHUP: the signature file replaced by
// garbage of several kinds, each followed by SIGHUP. Each reload is
// refused with a log line naming the file and what is wrong, the
// metrics say the last reload failed, and the running signatures go on
// refusing the worm; a good file then loads.
func TestFaultGarbageSignaturesThenSIGHUP(t *testing.T) {
	good := "WORM_SOBIG.B =\n" + sobig + "\n"
	d := startFaultDaemon(t, "max_file_size = \"1M\"\n", "[virus]\nsignatures = \"signatures\"\n", map[string]string{"signatures": good})
	sigs := filepath.Join(d.dir, "signatures")
	random := make([]byte, 64<<10)
	for i := range random {
		random[i] = byte(i*7919 + i>>8*31) // bytes of every value, NULs and line ends among them
	}
	garbage := []struct {
		name, why string
		write     func() error
	}{
		{"random bytes", "signatures:1: NUL byte in line", func() error { return os.WriteFile(sigs, random, 0o644) }},
		{"empty", "no signatures", func() error { return os.WriteFile(sigs, nil, 0o644) }},
		{"cut off in the pattern", "signatures:1: signature WORM_SOBIG.B: pattern is 10 bytes, the minimum is 16",
			func() error { return os.WriteFile(sigs, []byte("WORM_SOBIG.B =\n"+sobig[:10]), 0o644) }},
		{"a byte-order mark", "signatures:1: the file starts with a UTF-8 byte-order mark",
			func() error { return os.WriteFile(sigs, []byte("\xef\xbb\xbf"+good), 0o644) }},
		{"too large", "file too large: 1740000 bytes, at most 1048576", func() error { return os.WriteFile(sigs, []byte(strings.Repeat(good, 20000)), 0o644) }},
		{"gone", "no such file", func() error { return os.Remove(sigs) }},
	}
	for i, g := range garbage {
		if err := g.write(); err != nil {
			t.Fatal(err)
		}
		d.cmd.Process.Signal(syscall.SIGHUP)
		for deadline := time.Now().Add(10 * time.Second); len(d.lines("reload failed")) <= i; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no reload failure logged:\n%s", g.name, d.logs)
			}
		}
		line := d.lines("reload failed")[i]
		if !strings.Contains(line, sigs) && !strings.Contains(line, "signatures:") || !strings.Contains(line, g.why) {
			t.Errorf("%s: the log line does not say %q of the file:\n%s", g.name, g.why, line)
		}
		t.Logf("%s: %.300s", g.name, line[strings.Index(line, "msg="):])
		// The metrics follow the log line: the daemon's loop records the
		// outcome once the reload returns.
		m := d.metrics(t)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && m[`mailguard_reloads_total{result="failed"}`] != float64(i+1); time.Sleep(20 * time.Millisecond) {
			m = d.metrics(t)
		}
		if m["mailguard_config_last_reload_success"] != 0 || m[`mailguard_reloads_total{result="failed"}`] != float64(i+1) {
			t.Errorf("%s: metrics: last reload success %v, failed reloads %v", g.name, m["mailguard_config_last_reload_success"], m[`mailguard_reloads_total{result="failed"}`])
		}
		expectVerdict(t, d.port, "192.0.2.1", "x\r\n"+sobig+"\r\n", "550 5.7.0 VIRUS FOUND")
		expectVerdict(t, d.port, "192.0.2.1", "hello\r\n", "")
	}
	os.WriteFile(sigs, []byte(good+"WORM_KLEZ.H =\n"+klez+"\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitForLog(t, d.daemon, "msg=reloaded")
	expectVerdict(t, d.port, "192.0.2.1", "x\r\n"+klez+"\r\n", "550 5.7.0 VIRUS FOUND")
	if m := d.metrics(t); m["mailguard_config_last_reload_success"] != 1 {
		t.Errorf("a good file loaded, and the metrics say the last reload failed")
	}
	d.stop(t)
}
