package testserver

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DNS is a dnsmasq on a loopback port that answers for a test blocklist
// zone only: the names given, and NXDOMAIN for every other name in it.
type DNS struct {
	Port int
	Zone string
	t    testing.TB
	proc *process
}

// StartDNS starts dnsmasq serving zone with records name → address (names
// relative to the zone, such as "2.0.0.127"); it is stopped when the test
// ends.
func StartDNS(t testing.TB, zone string, records map[string]string) *DNS {
	t.Helper()
	Require(t, map[string]string{"dnsmasq": "dnsmasq"})
	d := &DNS{Port: FreePort(t), Zone: zone, t: t}
	args := []string{"--keep-in-foreground", "--no-daemon", "--no-resolv", "--no-hosts", "--no-dhcp-interface=",
		"--listen-address=127.0.0.1", "--bind-interfaces", "--port=" + strconv.Itoa(d.Port),
		"--local=/" + zone + "/", "--pid-file=", "--user=" + currentUser(), "--log-facility=-", "--conf-file=/dev/null"}
	for name, addr := range records {
		args = append(args, fmt.Sprintf("--host-record=%s.%s,%s,300", name, zone, addr))
	}
	d.proc = startProcess(t, "dnsmasq", args...)
	t.Cleanup(d.Stop)
	d.wait()
	return d
}

func currentUser() string {
	if os.Geteuid() == 0 {
		return "root"
	}
	return os.Getenv("USER")
}

// Server is the "HOST:PORT" mailguard is given.
func (d *DNS) Server() string { return fmt.Sprintf("127.0.0.1:%d", d.Port) }

// wait waits until dnsmasq answers a query in its zone.
func (d *DNS) wait() {
	d.t.Helper()
	m := new(dns.Msg)
	m.SetQuestion("probe."+d.Zone+".", dns.TypeA)
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, _, err := c.Exchange(m, d.Server()); err == nil {
			return
		}
		if d.proc.exited() {
			d.t.Fatalf("dnsmasq exited:\n%s", d.proc.out.String())
		}
	}
	d.t.Fatalf("dnsmasq does not answer on %s:\n%s", d.Server(), d.proc.out.String())
}

// Pause stops dnsmasq from answering (SIGSTOP), as a DNS server that
// hangs; Resume lets it go on.
func (d *DNS) Pause()  { d.proc.cmd.Process.Signal(syscall.SIGSTOP) }
func (d *DNS) Resume() { d.proc.cmd.Process.Signal(syscall.SIGCONT) }

// Stop stops dnsmasq.
func (d *DNS) Stop() {
	d.Resume()
	d.proc.stop()
}
