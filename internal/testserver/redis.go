package testserver

import (
	"fmt"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Redis is a redis-server on a loopback port, keeping nothing on disk.
type Redis struct {
	Port int
	t    testing.TB
	proc *process
}

// StartRedis starts redis-server; it is stopped when the test ends.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	Require(t, map[string]string{"redis-server": "redis-server"})
	r := &Redis{Port: FreePort(t), t: t}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// URL is the backend address mailguard is given.
func (r *Redis) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.Port) }

// Start starts (or restarts, on the same port) the server.
func (r *Redis) Start() {
	r.t.Helper()
	r.proc = startProcess(r.t, "redis-server", "--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.t.TempDir())
	waitDial(r.t, r.proc, "tcp", fmt.Sprintf("127.0.0.1:%d", r.Port), 30*time.Second)
}

// Pause stalls the server (SIGSTOP): connections stay open, nothing is
// answered, and commands sent meanwhile run when it resumes.
func (r *Redis) Pause() { r.proc.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume ends a Pause.
func (r *Redis) Resume() { r.proc.cmd.Process.Signal(syscall.SIGCONT) }

// Stop stops the server.
func (r *Redis) Stop() { r.proc.stop() }
