package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"mailguard/internal/loadgen"
)

// TestOutbreakThroughPostfixXCLIENT: a real Postfix takes copies of a new
// worm from one test client that XCLIENT makes look like a host of a new
// network each time. The first min_networks copies are delivered, the
// rest get 451 4.7.1 from Postfix; a newsletter from one network passes
// whole; `mailguard outbreak list` shows the fingerprint, `release` lets
// the next copy through, and the samples folder holds the copies.
func TestOutbreakThroughPostfixXCLIENT(t *testing.T) {
	const minNetworks = 5
	d := startMailguard(t, fmt.Sprintf(`listen = "LISTEN"
filters = ["outbreak"]
[outbreak]
min_networks = %d
samples = "samples"
max_samples = 8
`, minNetworks), nil)
	p := startPostfixConf(t, false, "smtpd_authorized_xclient_hosts = 127.0.0.0/8\n", fmt.Sprintf("inet:127.0.0.1:%d", d.port), "user@example.edu")
	dir := t.TempDir()
	if err := loadgen.GenerateWorm(loadgen.WormOptions{Dir: dir, Count: 12, Payload: 31, Size: 20000, Seed: 8, Vary: 4}); err != nil {
		t.Fatal(err)
	}
	worms, _ := filepath.Glob(filepath.Join(dir, "worm*.eml"))
	os.MkdirAll(dir, 0o755)
	send := func(addr, from, file string) string {
		cmd := exec.Command("swaks", "--server", "127.0.0.1", "--port", fmt.Sprint(p.port), "--xclient-addr", addr,
			"--from", from, "--to", "user@example.edu", "--data", file, "--timeout", "60")
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	final := regexp.MustCompile(`(?m)^<[-*~]* +(\d{3}[ -]\S+ .*)$`)
	outcome := func(transcript string) string {
		// The reply to the end of DATA: the last server line before QUIT.
		i := strings.LastIndex(transcript, " -> .")
		if i < 0 {
			return "no DATA: " + transcript
		}
		m := final.FindStringSubmatch(transcript[i:])
		if m == nil {
			return "no reply: " + transcript[i:]
		}
		return m[1]
	}
	var accepted, held int
	for i, w := range worms[:10] {
		got := outcome(send(fmt.Sprintf("10.0.%d.7", i), fmt.Sprintf("x%d@forged.example", i), w))
		switch {
		case strings.HasPrefix(got, "250 "):
			accepted++
		case strings.HasPrefix(got, "451 4.7.1"):
			held++
		default:
			t.Fatalf("copy %d: %s", i+1, got)
		}
	}
	if accepted != minNetworks || held != 10-minNetworks {
		t.Fatalf("%d accepted, %d held; want %d accepted", accepted, held, minNetworks)
	}
	// A newsletter: one attachment, 8 copies from hosts of one network.
	if err := loadgen.GenerateWorm(loadgen.WormOptions{Dir: dir, Count: 1, Payload: 32, Size: 20000, Seed: 9, Prefix: "news"}); err != nil {
		t.Fatal(err)
	}
	news := filepath.Join(dir, "newsworm00000.eml")
	for i := 0; i < 8; i++ {
		if got := outcome(send(fmt.Sprintf("198.51.100.%d", 10+i), "news@lists.example.com", news)); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("newsletter copy %d: %s", i, got)
		}
	}
	if n := len(p.delivered(t, "user", minNetworks+8)); n != minNetworks+8 {
		t.Fatalf("%d delivered", n)
	}
	if len(d.lines("fingerprint suspect", "networks=5")) != 1 {
		t.Fatalf("no single suspect line:\n%s", d.logs)
	}

	cfg := filepath.Join(d.dir, "mailguard.toml")
	out, err := exec.Command(filepath.Join(binDir, "mailguard"), "outbreak", "list", "--config", cfg).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "held") || !strings.Contains(string(out), ".pif") {
		t.Fatalf("outbreak list: %v\n%s", err, out)
	}
	id := strings.Fields(strings.Split(string(out), "\n")[1])[0]
	if out, err := exec.Command(filepath.Join(binDir, "mailguard"), "outbreak", "release", "--config", cfg, id).CombinedOutput(); err != nil {
		t.Fatalf("outbreak release %s: %v\n%s", id, err, out)
	}
	if got := outcome(send("10.0.77.7", "late@forged.example", worms[10])); !strings.HasPrefix(got, "250 ") {
		t.Fatalf("after the release: %s", got)
	}
	samples, _ := filepath.Glob(filepath.Join(d.dir, "samples", "new", "*"))
	if len(samples) != 8 {
		t.Fatalf("%d samples, want max_samples = 8", len(samples))
	}
}
