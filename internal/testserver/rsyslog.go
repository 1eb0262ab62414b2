package testserver

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Rsyslog is an rsyslogd taking lines on a loopback TCP port (RFC 5424 with
// octet counting or RFC 3164) and on a local socket of its own, writing
// each line to File as "FACILITY SEVERITY TAG PROCID MSG".
type Rsyslog struct {
	Port   int
	Socket string // a local syslog socket, as /dev/log would be
	File   string
	t      testing.TB
	dir    string
	proc   *process
}

// StartRsyslog starts rsyslogd; it is stopped when the test ends.
func StartRsyslog(t testing.TB) *Rsyslog {
	t.Helper()
	Require(t, map[string]string{"rsyslogd": "rsyslog"})
	dir, err := os.MkdirTemp("", "mailguard-rsyslog-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	r := &Rsyslog{Port: FreePort(t), Socket: filepath.Join(dir, "log.sock"), File: filepath.Join(dir, "out.log"), t: t, dir: dir}
	os.MkdirAll(filepath.Join(dir, "work"), 0o755)
	writeFile(t, filepath.Join(dir, "rsyslog.conf"), `global(workDirectory="%[1]s/work")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="%[2]s" RateLimit.Interval="0")
module(load="imtcp")
input(type="imtcp" port="%[3]d" address="127.0.0.1")
template(name="line" type="string" string="%%syslogfacility-text%% %%syslogseverity-text%% %%programname%% %%procid%% %%msg%%\n")
*.* action(type="omfile" file="%[4]s" template="line")
`, dir, r.Socket, r.Port, r.File)
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Addr is the TCP input's address, HOST:PORT.
func (r *Rsyslog) Addr() string { return fmt.Sprintf("127.0.0.1:%d", r.Port) }

// Start starts (or restarts, on the same port and socket) the server.
func (r *Rsyslog) Start() {
	r.t.Helper()
	pid := filepath.Join(r.dir, "rsyslogd.pid")
	os.Remove(pid)
	r.proc = startProcess(r.t, "rsyslogd", "-n", "-f", filepath.Join(r.dir, "rsyslog.conf"), "-i", pid)
	waitDial(r.t, r.proc, "tcp", r.Addr(), 30*time.Second)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if fi, err := os.Stat(r.Socket); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
	}
	r.t.Fatalf("rsyslogd made no socket %s:\n%s", r.Socket, r.proc.out.String())
}

// Stop stops the server; its socket goes with it.
func (r *Rsyslog) Stop() {
	if !r.proc.exited() {
		r.proc.cmd.Process.Signal(syscall.SIGTERM) // rsyslogd ignores SIGINT outside debug mode
	}
	r.proc.stop()
}

// Lines returns the lines written so far.
func (r *Rsyslog) Lines() []string {
	b, _ := os.ReadFile(r.File)
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

// WaitFor waits until a line containing every part is written, and
// returns it.
func (r *Rsyslog) WaitFor(parts ...string) string {
	r.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
	lines:
		for _, l := range r.Lines() {
			for _, p := range parts {
				if !strings.Contains(l, p) {
					continue lines
				}
			}
			return l
		}
	}
	r.t.Fatalf("rsyslogd wrote no line with %q; it wrote:\n%s\nits output:\n%s", parts, strings.Join(r.Lines(), "\n"), r.proc.out.String())
	return ""
}
