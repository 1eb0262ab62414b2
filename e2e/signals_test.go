package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A SIGHUP while the daemon is still starting (reading a large signature
// file) neither kills it nor is lost: it starts, then reloads.
func TestSIGHUPDuringStartUp(t *testing.T) {
	dir := t.TempDir()
	sigs := filepath.Join(dir, "sigs")
	out, err := exec.Command(filepath.Join(binDir, "milterbench"), "sigs", "-count", "30000").Output()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(sigs, out, 0o644)
	port := freePort(t)
	cfg := filepath.Join(dir, "m.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("listen = \"inet:127.0.0.1:%d\"\n[virus]\nsignatures = \"sigs\"\n", port)), 0o644)
	logs := &lockedBuffer{}
	cmd := exec.Command(filepath.Join(binDir, "mailguard"), "serve", "--config", cfg, "--allow-root")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// Past the Go runtime's start (it has started a second thread), and a
	// little more: the daemon is reading its large signature file. A
	// signal before the runtime is up would kill any program.
	for i := 0; i < 1000 && threads(cmd.Process.Pid) < 2; i++ {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if strings.Contains(logs.String(), "mailguard started") {
		t.Log("the daemon started before the signal; the test proves less")
	}
	cmd.Process.Signal(syscall.SIGHUP)
	waitForPort(t, port, "mailguard", logs.String)
	d := &daemon{cmd: cmd, logs: logs, port: port, dir: dir}
	waitForLog(t, d, "msg=reloaded")
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, logs)
	}
}

// A reload that meets a FIFO in place of the signature file fails at once
// with a reason, the old signatures keep running, and SIGTERM is obeyed
// within the drain timeout.
func TestReloadMeetsAFIFO(t *testing.T) {
	d := startMailguard(t, "listen = \"LISTEN\"\ndrain_timeout = \"2s\"\n[virus]\nsignatures = \"signatures\"\n",
		map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n"})
	sigs := filepath.Join(d.dir, "signatures")
	os.Remove(sigs)
	if err := syscall.Mkfifo(sigs, 0o600); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitForLog(t, d, "reload failed", "not a regular file (a FIFO)")
	if r := milterVerdict(t, d.port, "x\r\n"+sobig+"\r\n"); !strings.HasPrefix(r, "550 5.7.0") {
		t.Fatalf("the running signatures were lost: %q", r)
	}
	start := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("no exit within drain_timeout after SIGTERM")
	}
	t.Logf("stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
}

func threads(pid int) int {
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// A binary built from a checkout says which commit it is.
func TestVersionNamesTheRevision(t *testing.T) {
	out, err := exec.Command(filepath.Join(binDir, "mailguard"), "--version").Output()
	rev, revErr := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil || revErr != nil {
		t.Fatalf("%v %v", err, revErr)
	}
	if want := strings.TrimSpace(string(rev)); !strings.Contains(string(out), "("+want) {
		t.Fatalf("--version %q does not name revision %s", out, want)
	}
}
