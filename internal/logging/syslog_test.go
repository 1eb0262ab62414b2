package logging

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"mailguard/internal/config"
	"mailguard/internal/testserver"
)

// The local syslog daemon gets the configured facility and tag, and the
// level as severity.
func TestLocalSyslog(t *testing.T) {
	rs := testserver.StartRsyslog(t)
	log, closer, err := New(config.Log{Target: "syslog", SyslogSocket: rs.Socket, SyslogFacility: "local5", SyslogTag: "mgtag", Level: "info"}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	log.Warn("hello", "k", "v w")
	log.Info("second")
	log.Debug("hidden")
	closer.Close()
	pid := strconv.Itoa(os.Getpid())
	rs.WaitFor("local5 warning mgtag "+pid+" ", `msg=hello k="v w"`)
	rs.WaitFor("local5 info mgtag", "msg=second")
	if l := strings.Join(rs.Lines(), "\n"); strings.Contains(l, "hidden") {
		t.Errorf("a debug line at level info:\n%s", l)
	}
}

// Without a syslog daemon, check-config says so, and so does serve.
func TestLocalSyslogMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "log")
	c := config.Log{Target: "syslog", SyslogSocket: missing}
	if _, err := Check(context.Background(), c); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("Check with no socket: %v", err)
	}
	if _, _, err := New(c, os.Stderr); err == nil {
		t.Error("New with no socket: no error")
	}
	rs := testserver.StartRsyslog(t)
	c.SyslogSocket = rs.Socket
	if _, err := Check(context.Background(), c); err != nil {
		t.Errorf("Check with rsyslog listening: %v", err)
	}
	// A log host that is away is a warning only.
	c.Remote = fmt.Sprintf("127.0.0.1:%d", testserver.FreePort(t))
	if w, err := Check(context.Background(), c); err != nil || !strings.Contains(w, "does not answer") {
		t.Errorf("Check with the log host away: %q, %v", w, err)
	}
}

// The log host gets RFC 5424 lines with octet counting. Stopped mid-run,
// it costs the logger nothing but the lines past the queue, which are
// counted and told in one line when it is back; every other line arrives.
func TestRemoteSyslogOutage(t *testing.T) {
	rs := testserver.StartRsyslog(t)
	var stderr testserver.LockedBuffer
	log, closer, err := New(config.Log{Target: "stderr", Level: "info", SyslogFacility: "local3", SyslogTag: "mgtest", Remote: rs.Addr(), RemoteQueue: 5}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	pid := strconv.Itoa(os.Getpid())
	log.Info("before", "n", 1)
	rs.WaitFor("local3 info mgtest "+pid+" ", "msg=before n=1")

	rs.Stop()
	const outage = 20
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		for i := range outage {
			log.Warn("during", "i", i)
		}
	}()
	select {
	case <-logged:
	case <-time.After(30 * time.Second):
		t.Fatal("logging blocked while the log host was down")
	}
	rs.Start()
	notice := rs.WaitFor("local3 warning mgtest", "reachable again")
	log.Info("after")
	rs.WaitFor("msg=after")
	m := regexp.MustCompile(`dropped=(\d+)`).FindStringSubmatch(notice)
	if m == nil {
		t.Fatalf("notice without a count: %s", notice)
	}
	dropped, _ := strconv.Atoi(m[1])
	var kept, noticeAt, firstDuring int
	for i, l := range rs.Lines() {
		switch {
		case strings.Contains(l, "msg=during"):
			if kept == 0 {
				firstDuring = i
			}
			kept++
		case strings.Contains(l, "reachable again"):
			noticeAt = i
		}
	}
	if dropped == 0 || kept+dropped != outage {
		t.Errorf("%d lines arrived and %d were dropped of %d logged during the outage (queue 5)", kept, dropped, outage)
	}
	if kept > 0 && noticeAt > firstDuring {
		t.Errorf("the notice came after the lines it follows:\n%s", strings.Join(rs.Lines(), "\n"))
	}
	// The local log tells both ends of the outage, once each.
	local := stderr.String()
	if n := strings.Count(local, "unreachable"); n != 1 || !strings.Contains(local, `reachable again" dropped=`+m[1]) {
		t.Errorf("local log about the outage (%d unreachable lines):\n%s", n, local)
	}
}

// A syslog daemon that offers a stream socket (syslog-ng can) gets
// newline-ended lines.
func TestLocalSyslogStreamSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	log, closer, err := New(config.Log{Target: "syslog", SyslogSocket: path, SyslogFacility: "daemon", SyslogTag: "mg"}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	log.Error("broken", "k", 1)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if want := "<27>"; err != nil || !strings.HasPrefix(line, want) || !strings.HasSuffix(line, " mg["+strconv.Itoa(os.Getpid())+"]: msg=broken k=1\n") {
		t.Errorf("line %q (%v), want daemon.err (<27>) and the tag", line, err)
	}
}
