package e2e

import (
	"strings"
	"testing"
	"time"

	"mailguard/internal/testserver"
)

// The daemon's decisions reach a central log host (a real rsyslog) with
// the configured facility and tag, besides the local log, and a worm is
// refused while the log host is down: logging never holds up mail.
func TestDaemonRemoteSyslog(t *testing.T) {
	rs := testserver.StartRsyslog(t)
	d := startMailguard(t, `listen = "LISTEN"
[virus]
signatures = "signatures"
[log]
syslog_facility = "local2"
syslog_tag = "mx1-mailguard"
remote = "`+rs.Addr()+`"
`, map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n"})
	if r := milterVerdict(t, d.port, "x\r\n"+sobig+"\r\n"); !strings.HasPrefix(r, "550 5.7.0") {
		t.Fatalf("worm: %q", r)
	}
	rs.WaitFor("local2 info mx1-mailguard ", "msg=decision", "reason=WORM_SOBIG.B")
	rs.WaitFor("local2 info mx1-mailguard ", `msg="mailguard started"`)

	rs.Stop()
	if r := milterVerdict(t, d.port, "y\r\n"+sobig+"\r\n"); !strings.HasPrefix(r, "550 5.7.0") {
		t.Fatalf("worm with the log host down: %q", r)
	}
	waitForLog(t, d, "unreachable")
	rs.Start()
	if r := milterVerdict(t, d.port, "z\r\n"+sobig+"\r\n"); !strings.HasPrefix(r, "550 5.7.0") {
		t.Fatalf("worm after the log host is back: %q", r)
	}
	rs.WaitFor("reachable again", "dropped=0")
	// The decision made during the outage waited in the queue.
	for i := 0; len(linesWith(rs.Lines(), "msg=decision")) != 3; i++ {
		if i == 300 {
			t.Fatalf("want 3 decisions at the log host:\n%s", strings.Join(rs.Lines(), "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func linesWith(lines []string, word string) []string {
	var out []string
	for _, l := range lines {
		if strings.Contains(l, word) {
			out = append(out, l)
		}
	}
	return out
}
