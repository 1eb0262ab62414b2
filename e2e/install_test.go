package e2e

import (
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadmeInstall runs the README's install commands as written, with
// the system folders moved into a fresh one, from a clean checkout's
// point of view: what they build and write must make a daemon that starts,
// on a unix socket only root and the postfix group reach.
func TestReadmeInstall(t *testing.T) {
	requireCommands(t, map[string]string{"postfix": "postfix"}) // the postfix group
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)[strings.Index(string(readme), "## Install and hook into the MTA"):]
	block := section[strings.Index(section, "```sh\n")+6:]
	block = block[:strings.Index(block, "```")]
	fresh := t.TempDir()
	bin, etc := filepath.Join(fresh, "sbin"), filepath.Join(fresh, "etc", "mailguard")
	os.MkdirAll(bin, 0o755)
	os.MkdirAll(filepath.Join(fresh, "run"), 0o755)
	spool := filepath.Join(fresh, "spool", "postfix")
	os.MkdirAll(spool, 0o755)
	script := strings.NewReplacer("/usr/local/sbin", bin, "/etc/mailguard", etc, "/run/", filepath.Join(fresh, "run")+"/",
		"/var/spool/postfix", spool).Replace(block)
	var serve string
	var lines []string
	for _, line := range strings.Split(strings.TrimSpace(script), "\n") {
		if strings.HasPrefix(line, "mailguard serve") {
			serve = line
			continue
		}
		lines = append(lines, line)
	}
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", strings.Join(lines, "\n"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("install commands failed: %v\n%s\n%s", err, script, out)
	}
	if !strings.Contains(string(out), "mailguard.toml: OK") {
		t.Fatalf("check-config did not say OK:\n%s", out)
	}
	cfg := filepath.Join(etc, "mailguard.toml")
	logs := &lockedBuffer{}
	d := exec.Command("bash", "-c", "exec "+serve)
	d.Env = cmd.Env
	d.Stdout, d.Stderr = logs, logs
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { d.Process.Kill(); d.Wait() }()
	sock := filepath.Join(spool, "mailguard", "milter.sock")
	waitForFile(t, sock)
	time.Sleep(100 * time.Millisecond)
	group, err := user.LookupGroup("postfix")
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{sock, filepath.Dir(sock)} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o660) | os.ModeSocket
		if path != sock {
			want = 0o750 | os.ModeDir
		}
		if gid := strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Gid)); fi.Mode() != want || gid != group.Gid {
			t.Errorf("%s: mode %v, group %s; want %v, postfix (%s)", path, fi.Mode(), gid, want, group.Gid)
		}
	}
	if c, err := net.Dial("unix", sock); err != nil {
		t.Errorf("the installed daemon's socket: %v", err)
	} else {
		c.Close()
	}
	if !strings.Contains(logs.String(), `virus="3 signatures from `+filepath.Join(etc, "signatures")+`"`) {
		t.Fatalf("the daemon did not load the installed signatures:\n%s", logs)
	}
	reload := exec.Command(filepath.Join(bin, "mailguard"), "reload", "--config", cfg)
	if out, err := reload.CombinedOutput(); err != nil || !strings.Contains(string(out), "reloaded") {
		t.Fatalf("reload of the installed daemon: %v\n%s", err, out)
	}
}
