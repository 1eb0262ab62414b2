// Package testserver starts the real servers tests drive (clamd, Redis, a
// DNS server), each in a test's own directory, on loopback or a socket of
// its own, and stops them when the test ends. A server whose program is
// missing is installed from Debian packages where the test runs as root;
// where it cannot be, the test fails under CI and is skipped elsewhere.
package testserver

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

var (
	aptMu      sync.Mutex
	aptUpdated bool
)

// Require makes sure the commands exist, installing their Debian packages
// (command → package) when they do not.
func Require(t testing.TB, pkgs map[string]string) {
	t.Helper()
	var missing []string
	for cmd, pkg := range pkgs {
		if _, err := exec.LookPath(cmd); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return
	}
	fail := t.Skipf
	if os.Getenv("CI") != "" {
		fail = t.Fatalf
	}
	if os.Geteuid() != 0 {
		fail("missing %v and not root to install them", missing)
	}
	aptMu.Lock()
	defer aptMu.Unlock()
	if !aptUpdated {
		if out, err := exec.Command("apt-get", "update", "-q").CombinedOutput(); err != nil {
			fail("apt-get update: %v\n%s", err, out)
		}
		aptUpdated = true
	}
	cmd := exec.Command("apt-get", append([]string{"install", "-y", "-q"}, missing...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		fail("apt-get install %v: %v\n%s", missing, err, out)
	}
}

// FreePort returns a loopback TCP port nobody listens on now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// process is a server run in the foreground, its output kept for failure
// messages.
type process struct {
	cmd  *exec.Cmd
	out  *LockedBuffer
	done chan struct{}
}

func startProcess(t testing.TB, name string, args ...string) *process {
	t.Helper()
	p := &process{out: &LockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	return p
}

func (p *process) stop() {
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitDial waits until network/addr accepts connections, the process
// exits, or the time is up.
func waitDial(t testing.TB, p *process, network, addr string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout(network, addr, time.Second); err == nil {
			c.Close()
			return
		}
		if p.exited() {
			t.Fatalf("%s exited before listening on %s:\n%s", p.cmd.Path, addr, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not listening on %s after %s:\n%s", p.cmd.Path, addr, limit, p.out.String())
}

// LockedBuffer collects a process's output, written and read from
// several goroutines.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func writeFile(t testing.TB, path, format string, args ...any) {
	t.Helper()
	if err := os.WriteFile(path, []byte(fmt.Sprintf(format, args...)), 0o644); err != nil {
		t.Fatal(err)
	}
}
