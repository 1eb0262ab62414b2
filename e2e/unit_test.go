package e2e

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
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
