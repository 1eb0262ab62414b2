package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The systemd unit shipped in dist/ parses without a complaint and its
// sandbox rates 2.0 or lower in systemd's own exposure score (0 is a unit
// that can do nothing, 10 one that can do anything), without a running
// systemd.
func TestUnitExposure(t *testing.T) {
	requireCommands(t, map[string]string{"systemd-analyze": "systemd"})
	_, file, _, _ := runtime.Caller(0)
	unit := filepath.Join(filepath.Dir(filepath.Dir(file)), "dist", "mailguard.service")
	out, _ := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		// The binary is not installed here; every other remark is a defect.
		if line != "" && !strings.Contains(line, "is not executable: No such file or directory") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
	out, err := exec.Command("systemd-analyze", "security", "--offline=true", unit).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for mailguard.service: (\d+\.\d)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	if score > 2.0 {
		t.Errorf("exposure %.1f, want 2.0 or lower:\n%s", score, out)
	}
	t.Logf("exposure %.1f", score)
}

// Every system call the daemon makes (start as an ordinary user, a unix
// socket given to a group, messages, a reload, the drain) is one the
// unit's SystemCallFilter allows: otherwise systemd would fail the call
// with EPERM (SystemCallErrorNumber) and the daemon with it. The calls are
// recorded with strace, since no systemd runs here to enforce the filter.
func TestUnitSyscallFilter(t *testing.T) {
	requireCommands(t, map[string]string{"systemd-analyze": "systemd", "strace": "strace", "setpriv": "util-linux"})
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root to start the daemon as another user") // CI runs as root
		}
		t.Skip("needs root to start the daemon as another user")
	}
	_, file, _, _ := runtime.Caller(0)
	unit, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(file)), "dist", "mailguard.service"))
	if err != nil {
		t.Fatal(err)
	}
	allowed := unitSyscalls(t, string(unit))

	dir, err := os.MkdirTemp("", "mailguard-seccomp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	os.Chown(dir, 65534, 65534)
	bin := filepath.Join(dir, "mailguard")
	copyFile(t, filepath.Join(binDir, "mailguard"), bin, 0o755)
	corpus := filepath.Join(dir, "corpus")
	if out, err := exec.Command(filepath.Join(binDir, "milterbench"), "gen", "-dir", corpus, "-count", "10", "-size", "20000",
		"-infect", sobig, "-infect-every", "5").CombinedOutput(); err != nil {
		t.Fatalf("milterbench gen: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "sock", "milter.sock")
	cfg := filepath.Join(dir, "mailguard.toml")
	write(t, cfg, "listen = \"unix:"+sock+"\"\nsocket_group = \"nogroup\"\npid_file = \""+dir+"/mailguard.pid\"\n")
	trace := filepath.Join(dir, "trace")
	logs := &lockedBuffer{}
	cmd := exec.Command("strace", "-f", "-qq", "-o", trace, "setpriv", "--reuid=nobody", "--regid=nogroup", "--init-groups",
		bin, "serve", "--config", cfg)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if i == 300 {
			t.Fatalf("mailguard did not listen on %s:\n%s", sock, logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := exec.Command(filepath.Join(binDir, "milterbench"), "run", "-milter", "unix:"+sock, "-corpus", corpus, "-c", "4", "-n", "40").CombinedOutput(); err != nil || !strings.Contains(string(out), "550 5.7.0=8") {
		t.Fatalf("milterbench: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "reload", "--config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	pid, _ := os.ReadFile(filepath.Join(dir, "mailguard.pid"))
	n, _ := strconv.Atoi(strings.TrimSpace(string(pid)))
	syscall.Kill(n, syscall.SIGTERM)
	cmd.Wait()
	if !strings.Contains(logs.String(), "msg=stopped") {
		t.Fatalf("the daemon did not stop cleanly:\n%s", logs)
	}

	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	// Only what mailguard calls: setpriv's own calls come before its exec.
	text := string(b)
	i := strings.Index(text, `execve("`+bin+`"`)
	if i < 0 {
		t.Fatalf("no exec of the daemon in the trace")
	}
	used := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\d+\s+([a-z0-9_]+)\(`).FindAllStringSubmatch(text[i:], -1) {
		used[m[1]] = true
	}
	var denied []string
	for name := range used {
		if !allowed[name] {
			denied = append(denied, name)
		}
	}
	if len(used) < 20 || len(denied) > 0 {
		t.Errorf("of %d system calls the daemon made, the unit's filter denies %v", len(used), denied)
	}
}

// unitSyscalls applies a unit's SystemCallFilter= lines as systemd does:
// the first (not inverted) is the allow list, "~" lines take from it,
// later plain lines add to it; groups expand with systemd-analyze.
func unitSyscalls(t *testing.T, unit string) map[string]bool {
	t.Helper()
	allowed := map[string]bool{}
	for _, line := range strings.Split(unit, "\n") {
		v, ok := strings.CutPrefix(line, "SystemCallFilter=")
		if !ok {
			continue
		}
		deny := strings.HasPrefix(v, "~")
		for _, item := range strings.Fields(strings.TrimPrefix(v, "~")) {
			for _, name := range expandSyscalls(t, item, map[string]bool{}) {
				allowed[name] = !deny
			}
		}
	}
	return allowed
}

func expandSyscalls(t *testing.T, item string, seen map[string]bool) []string {
	if !strings.HasPrefix(item, "@") {
		return []string{item}
	}
	if seen[item] {
		return nil
	}
	seen[item] = true
	out, err := exec.Command("systemd-analyze", "syscall-filter", item).Output()
	if err != nil {
		t.Fatalf("systemd-analyze syscall-filter %s: %v", item, err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n")[1:] {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		names = append(names, expandSyscalls(t, line, seen)...)
	}
	return names
}
