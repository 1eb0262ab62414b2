// Package e2e runs mailguard against real servers: a private Postfix
// instance that uses it as a milter, with messages sent by swaks. The test
// installs what it needs from Debian packages when it is missing.
package e2e

import (
	"bufio"
	"fmt"
	"mailguard/internal/testserver"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binDir holds the binaries built once for all tests.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mailguard-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	args := append(append([]string{"build", "-buildvcs=true"}, raceFlags...), "-o", binDir, "./cmd/mailguard", "./cmd/milterbench")
	build := exec.Command("go", args...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(binDir)
	os.Exit(code)
}

// requireCommands makes sure the commands exist (see testserver.Require).
func requireCommands(t *testing.T, pkgs map[string]string) { testserver.Require(t, pkgs) }

func run(t *testing.T, env []string, name string, args ...string) error {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int { return testserver.FreePort(t) }

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago: taken at once, where n calls of freePort may return one port twice.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

func waitForPort(t *testing.T, port int, what string, logs func() string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not listen on port %d in time\n%s", what, port, logs())
}

// lockedBuffer collects a process's output.
type lockedBuffer = testserver.LockedBuffer

// daemon is a running mailguard serve.
type daemon struct {
	cmd  *exec.Cmd
	logs *lockedBuffer
	port int
	dir  string
}

// startMailguard writes config (with LISTEN replaced by a free port) and
// runs mailguard serve until the test ends.
func startMailguard(t *testing.T, config string, files map[string]string) *daemon {
	t.Helper()
	return startMailguardOn(t, freePort(t), config, files)
}

// startMailguardOn is startMailguard on a port chosen beforehand (so an MTA
// can be configured with it first).
func startMailguardOn(t *testing.T, port int, config string, files map[string]string) *daemon {
	t.Helper()
	d := startMailguardListen(t, fmt.Sprintf("inet:127.0.0.1:%d", port), config, files)
	d.port = port
	waitForPort(t, d.port, "mailguard", d.logs.String)
	return d
}

// startMailguardSocket runs mailguard on a unix socket, as a chrooted
// Postfix reaches it: the socket's folder is mailguard's to create, and
// the socket belongs to Postfix's group.
func startMailguardSocket(t *testing.T, sock, config string, files map[string]string) *daemon {
	t.Helper()
	d := startMailguardListen(t, "unix:"+sock, "socket_group = \"postfix\"\n"+config, files)
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return d
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("mailguard did not listen on %s:\n%s", sock, d.logs)
	return nil
}

// startMailguardListen writes config (LISTEN replaced by listen; a config
// with global keys of its own gets listen first) and starts the daemon.
func startMailguardListen(t *testing.T, listen, config string, files map[string]string) *daemon {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := &daemon{logs: &lockedBuffer{}, dir: dir}
	if strings.Contains(config, "LISTEN") {
		config = strings.ReplaceAll(config, "LISTEN", listen)
	} else {
		config = fmt.Sprintf("listen = %q\n", listen) + config
	}
	cfgFile := filepath.Join(dir, "mailguard.toml")
	if err := os.WriteFile(cfgFile, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(filepath.Join(binDir, "mailguard"), "serve", "--config", cfgFile, "--allow-root")
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("mailguard log:\n%s", d.logs)
		}
	})
	return d
}

// lines returns the log lines that contain all of the words.
func (d *daemon) lines(words ...string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(d.logs.String()))
	for sc.Scan() {
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(sc.Text(), w)
		}
		if ok {
			out = append(out, sc.Text())
		}
	}
	return out
}
