package e2e

// Fault injection against the real binary: the MTA hanging up at every
// stage, clamd, Redis and the DNS server dying or hanging, the capture
// disk filling, a signature file replaced by garbage, and signals under
// load. Each test counts the daemon's goroutines and open descriptors
// (its own metrics, /proc) before and after, so a leak shows as a count
// that does not come back. docs/reliability/faults.md lists them.

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/testserver"
)

// faultDaemon is a mailguard serve with its HTTP listener on, for its
// metrics.
type faultDaemon struct {
	*daemon
	http string
}

// startFaultDaemon runs mailguard with global keys globals and the
// sections after them; the HTTP listener is on a port of its own.
func startFaultDaemon(t *testing.T, globals, sections string, files map[string]string) *faultDaemon {
	t.Helper()
	httpPort := freePort(t)
	d := startMailguard(t, fmt.Sprintf("listen = \"LISTEN\"\n%s[http]\nlisten = \"127.0.0.1:%d\"\n%s", globals, httpPort, sections), files)
	waitForPort(t, httpPort, "mailguard's HTTP listener", d.logs.String)
	return &faultDaemon{daemon: d, http: fmt.Sprintf("127.0.0.1:%d", httpPort)}
}

// scrapeClient opens a connection per scrape, so that no kept-alive
// connection of the test's is counted among the daemon's goroutines.
var scrapeClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// metrics returns the daemon's metrics by series ("name" or
// `name{label="value"}`).
func (d *faultDaemon) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	resp, err := scrapeClient.Get("http://" + d.http + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v\n%s", err, d.logs)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if strings.HasPrefix(line, "#") || i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// usage is what a leak would make grow.
type usage struct {
	goroutines, fds int
}

func (u usage) String() string {
	return fmt.Sprintf("%d goroutines, %d open descriptors", u.goroutines, u.fds)
}

func (d *faultDaemon) usage(t *testing.T) usage {
	t.Helper()
	g := int(d.metrics(t)["go_goroutines"])
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return usage{g, len(fds)}
}

// idle waits until the daemon has no milter connection open.
func (d *faultDaemon) idle(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); d.metrics(t)["mailguard_sessions_in_flight"] != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("milter connections still open: %v\n%s", d.metrics(t)["mailguard_sessions_in_flight"], d.logs)
		}
	}
}

// settle waits until goroutines and descriptors are back to base (plus
// slack, for a scrape's own connection ending). A goroutine that served
// a milter connection waits 10 s for the next before it ends, so this
// takes that long after a burst of connections.
func (d *faultDaemon) settle(t *testing.T, base usage, slack int) usage {
	t.Helper()
	d.idle(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		u := d.usage(t)
		if u.goroutines <= base.goroutines+slack && u.fds <= base.fds+slack {
			return u
		}
		if time.Now().After(deadline) {
			t.Fatalf("not back to %v after the faults: %v\n%s", base, u, d.logs)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// warmUsage is the daemon's usage after n sessions at once, each from
// a client of its own: a goroutine that served a session waits 10 s for
// the next before it ends, so measured after a burst as large as the
// test's own, the count need not wait for those to end.
func (d *faultDaemon) warmUsage(t *testing.T, n int) usage {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r, err := oneMessage(d.port, fmt.Sprintf("198.51.100.%d", i+1), "hello\r\n"); r != "" || err != nil {
				t.Errorf("warming up: %q %v", r, err)
			}
		}()
	}
	wg.Wait()
	d.idle(t)
	return d.usage(t)
}

// stop sends SIGTERM and requires a clean exit (status 0: also no data
// race found, under -race) within the drain.
func (d *faultDaemon) stop(t *testing.T) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, d.logs)
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("no exit after SIGTERM\n%s", d.logs)
	}
	if strings.Contains(d.logs.String(), "DATA RACE") {
		t.Fatalf("the race detector found a race:\n%s", d.logs)
	}
}

// grabDialer keeps the connection go-milter's client dials, so a test
// can hang up on the daemon as an MTA that dies does.
type grabDialer struct{ conn net.Conn }

func (g *grabDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	g.conn = c
	return c, err
}

// mtaSession is one milter connection, opened as Postfix opens it.
type mtaSession struct {
	s    *milter.ClientSession
	conn net.Conn
}

func openSession(port int) (*mtaSession, error) {
	g := &grabDialer{}
	c := milter.NewClient("tcp", fmt.Sprintf("127.0.0.1:%d", port), milter.WithDialer(g), milter.WithReadTimeout(60*time.Second))
	s, err := c.Session(milter.NewMacroBag())
	if err != nil {
		return nil, err
	}
	return &mtaSession{s: s, conn: g.conn}, nil
}

// hangUp closes the connection without a word, as a crashed smtpd does;
// abrupt sends a reset instead of an orderly close.
func (m *mtaSession) hangUp(abrupt bool) {
	if tc, ok := m.conn.(*net.TCPConn); ok && abrupt {
		tc.SetLinger(0)
	}
	m.conn.Close()
}

// greet sends the connection and HELO; "" when neither is refused.
func (m *mtaSession) greet(client string) (string, error) {
	return m.steps(
		func() (*milter.Action, error) { return m.s.Conn("mx.example.org", milter.FamilyInet, 25, client) },
		func() (*milter.Action, error) { return m.s.Helo("mx.example.org") })
}

// steps runs stages until one ends the message (its reply) or fails.
func (m *mtaSession) steps(steps ...func() (*milter.Action, error)) (string, error) {
	for _, step := range steps {
		act, err := step()
		if err != nil {
			return "", err
		}
		if act.StopProcessing() {
			return act.SMTPReply, nil
		}
	}
	return "", nil
}

// message sends one message on the session: "" for accepted, else the
// reply of the stage that refused it.
func (m *mtaSession) message(body string) (string, error) {
	s := m.s
	if r, err := m.steps(
		func() (*milter.Action, error) { return s.Mail("sender@example.org", "") },
		func() (*milter.Action, error) { return s.Rcpt("user@example.edu", "") },
		func() (*milter.Action, error) { return s.DataStart() },
		func() (*milter.Action, error) { return s.HeaderField("Subject", "test", nil) },
		func() (*milter.Action, error) { return s.HeaderEnd() },
	); r != "" || err != nil {
		if err == nil {
			err = s.Abort(nil)
		}
		return r, err
	}
	for i := 0; i < len(body); i += 65535 {
		act, err := s.BodyChunk([]byte(body[i:min(i+65535, len(body))]))
		if err != nil {
			return "", err
		}
		if act.StopProcessing() {
			return act.SMTPReply, s.Abort(nil)
		}
	}
	_, act, err := s.End()
	if err != nil {
		return "", err
	}
	if act.StopProcessing() {
		return act.SMTPReply, nil
	}
	return "", nil
}

// oneMessage is a whole SMTP session of one message from client.
func oneMessage(port int, client, body string) (string, error) {
	m, err := openSession(port)
	if err != nil {
		return "", err
	}
	defer m.s.Close()
	if r, err := m.greet(client); r != "" || err != nil {
		return r, err
	}
	return m.message(body)
}

// expectVerdict sends one message and fails the test unless its reply
// starts with want ("" for accepted).
func expectVerdict(t *testing.T, port int, client, body, want string) {
	t.Helper()
	r, err := oneMessage(port, client, body)
	if err != nil || want == "" && r != "" || !strings.HasPrefix(r, want) {
		t.Fatalf("from %s: reply %q, error %v; want %q", client, r, err, want)
	}
}

// TestFaultMTAHangsUpAtEveryStage: the MTA goes away after each stage of
// the dialogue (and while clamd scans at the end), with an orderly close
// and with a reset. Every filter has taken something by then: a DNS
// blocklist question, a concurrency slot (limit 1 per client, so one
// not given back refuses the client's next session), a clamd connection
// (2 at most, so two kept would leave the next message without one),
// a capture file in tmp/. After each stage a clean message is accepted
// and a test virus refused (by clamd); at the end every client that hung
// up gets in again, the daemon's goroutines and descriptors are back
// where they were, capture's tmp/ is empty, and it holds a copy of each
// accepted message.
func TestFaultMTAHangsUpAtEveryStage(t *testing.T) {
	clamd := testserver.StartClamd(t, testserver.ClamdOptions{})
	dns := testserver.StartDNS(t, "bl.test", map[string]string{"2.0.0.127": "127.0.0.2"})
	capture := t.TempDir()
	d := startFaultDaemon(t, "filters = [\"access\", \"ratelimit\", \"virus\", \"clamav\", \"capture\"]\n", `[access]
dnsbl = ["bl.test"]
dns_server = "`+dns.Server()+`"
dnsbl_timeout = "1s"
[ratelimit]
[[ratelimit.rule]]
name = "one-at-a-time"
event = "concurrency"
key = "client"
limit = 1
[virus]
signatures = "signatures"
[clamav]
address = "`+clamd.Address()+`"
clamd_config = ""
max_connections = 2
timeout = "5s"
[capture]
switch = "capture.on"
dir = "`+filepath.Join(capture, "copies")+`"
`, map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n", "capture.on": ""})

	virus := "x\r\n" + testserver.TestString + "\r\n"
	// A body of a few chunks, so that "mid-body" is mid-stream to clamd.
	body := strings.Repeat("R0lGODlhAQABAIAAAP8AAAAAACwAAAAAAQABAAACAkQBADsAbcdefghijklmnopqrstuvwxyz0123\r\n", 3000)
	expectVerdict(t, d.port, "192.0.2.200", "hello\r\n", "")
	expectVerdict(t, d.port, "192.0.2.201", virus, "550 5.7.0 VIRUS FOUND: "+testserver.TestStringName)
	base := d.warmUsage(t, 4)
	t.Logf("before: %v", base)

	// Each cut runs the dialogue up to a stage, then the MTA hangs up.
	type cut struct {
		stage string
		run   func(s *milter.ClientSession, client string) error
	}
	step := func(f func() (*milter.Action, error)) error { _, err := f(); return err }
	order := []cut{
		{"negotiation", func(*milter.ClientSession, string) error { return nil }},
		{"connect", func(s *milter.ClientSession, client string) error {
			return step(func() (*milter.Action, error) { return s.Conn("mx.example.org", milter.FamilyInet, 25, client) })
		}},
		{"helo", func(s *milter.ClientSession, _ string) error {
			return step(func() (*milter.Action, error) { return s.Helo("mx.example.org") })
		}},
		{"mail", func(s *milter.ClientSession, _ string) error {
			return step(func() (*milter.Action, error) { return s.Mail("sender@example.org", "") })
		}},
		{"rcpt", func(s *milter.ClientSession, _ string) error {
			return step(func() (*milter.Action, error) { return s.Rcpt("user@example.edu", "") })
		}},
		{"data", func(s *milter.ClientSession, _ string) error { return step(s.DataStart) }},
		{"header", func(s *milter.ClientSession, _ string) error {
			return step(func() (*milter.Action, error) { return s.HeaderField("Subject", "cut", nil) })
		}},
		{"end of headers", func(s *milter.ClientSession, _ string) error { return step(s.HeaderEnd) }},
		{"mid-body", func(s *milter.ClientSession, _ string) error {
			return step(func() (*milter.Action, error) { return s.BodyChunk([]byte(body[:65535])) })
		}},
		{"before end of message", func(s *milter.ClientSession, _ string) error {
			for i := 65535; i < len(body); i += 65535 {
				if _, err := s.BodyChunk([]byte(body[i:min(i+65535, len(body))])); err != nil {
					return err
				}
			}
			return nil
		}},
		// The end of the message sent, and the MTA goes away while clamd
		// scans (no wait for the reply).
		{"end of message", nil},
	}
	upTo := func(m *mtaSession, stage, client string) error {
		for _, c := range order {
			var err error
			if c.run != nil {
				err = c.run(m.s, client)
			} else {
				_, err = m.conn.Write([]byte{0, 0, 0, 1, 'E'})
			}
			if err != nil {
				return fmt.Errorf("%s: %w", c.stage, err)
			}
			if c.stage == stage {
				return nil
			}
		}
		return fmt.Errorf("no stage %q", stage)
	}
	copies := 1 + 4 // the clean messages above
	var clients []string
	for i, c := range order {
		for n := range 4 {
			// A client of its own: the next session of a client whose
			// last one the daemon has not yet seen go would be refused at
			// connect (its concurrency slot still held), before it takes
			// anything.
			client := fmt.Sprintf("192.0.2.%d", 4*i+n+1)
			clients = append(clients, client)
			m, err := openSession(d.port)
			if err != nil {
				t.Fatalf("%s: %v", c.stage, err)
			}
			if err := upTo(m, c.stage, client); err != nil {
				t.Fatalf("%s: %v", c.stage, err)
			}
			m.hangUp(n%2 == 1)
		}
		d.idle(t)
		// clamd connections are there.
		expectVerdict(t, d.port, fmt.Sprintf("198.51.100.%d", 2*i+1), "hello\r\n", "")
		expectVerdict(t, d.port, fmt.Sprintf("198.51.100.%d", 2*i+2), virus, "550 5.7.0 VIRUS FOUND")
		copies++
	}
	// Every client's slot is free again.
	d.idle(t)
	for _, client := range clients {
		expectVerdict(t, d.port, client, "hello\r\n", "")
		copies++
	}
	if l := d.lines("panic"); len(l) != 0 {
		t.Fatalf("a session panicked:\n%s", d.logs)
	}
	after := d.settle(t, base, 2)
	t.Logf("after %d hang-ups at %d stages and %d whole messages: %v", len(clients), len(order), 2*len(order)+len(clients), after)
	if tmp, _ := os.ReadDir(filepath.Join(capture, "copies", "tmp")); len(tmp) != 0 {
		t.Errorf("%d partial copies left in capture's tmp/", len(tmp))
	}
	// Every accepted message is copied: those above, and those whose end
	// the MTA sent before it went away, which may have been judged.
	accepted := int(d.metrics(t)[`mailguard_verdicts_total{filter="",outcome="accepted"}`])
	if got, _ := os.ReadDir(filepath.Join(capture, "copies", "new")); len(got) != accepted || accepted < copies || accepted > copies+4 {
		t.Errorf("%d copies of %d accepted messages, want %d to %d", len(got), accepted, copies, copies+4)
	}
	if refused := d.lines("decision", "filter=ratelimit"); len(refused) != 0 {
		t.Errorf("concurrency slots not given back:\n%s", strings.Join(refused, "\n"))
	}
	d.stop(t)
}

// midMessage opens a session and sends a message up to the first body
// chunk: the stream to clamd has begun.
func midMessage(t *testing.T, port int, client, chunk string) *mtaSession {
	t.Helper()
	m, err := openSession(port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.conn.Close() })
	s := m.s
	if r, err := m.greet(client); r != "" || err != nil {
		t.Fatalf("%q %v", r, err)
	}
	if r, err := m.steps(
		func() (*milter.Action, error) { return s.Mail("sender@example.org", "") },
		func() (*milter.Action, error) { return s.Rcpt("user@example.edu", "") },
		func() (*milter.Action, error) { return s.DataStart() },
		func() (*milter.Action, error) { return s.HeaderField("Subject", "test", nil) },
		func() (*milter.Action, error) { return s.HeaderEnd() },
		func() (*milter.Action, error) { return s.BodyChunk([]byte(chunk)) },
	); r != "" || err != nil {
		t.Fatalf("%q %v", r, err)
	}
	return m
}

// finish sends the rest of a message begun by midMessage, and its end,
// and closes the session.
func (m *mtaSession) finish(rest string) (string, error) {
	defer m.s.Close()
	if rest != "" {
		if _, err := m.s.BodyChunk([]byte(rest)); err != nil {
			return "", err
		}
	}
	_, act, err := m.s.End()
	if err != nil {
		return "", err
	}
	if act.StopProcessing() {
		return act.SMTPReply, nil
	}
	return "", nil
}

// TestFaultClamdDiesAndHangs: one clamd, two daemons using it, one with
// the default on_error ("tempfail"), one with on_error = "accept". clamd
// killed (SIGKILL) while both stream a message to it: the tempfail one
// answers 451 4.3.0, the accept one delivers, and so while clamd is
// down; restarted, both scan again. clamd stopped (SIGSTOP) with a
// message streamed and one just begun: each gets its on_error at the
// filter's timeout; resumed (SIGCONT), both scan again. clamd killed
// while it owes verdicts (stopped, then SIGKILL): on_error at once, not
// at the timeout. Neither daemon stops, and their goroutines and
// descriptors come back to where they were.
func TestFaultClamdDiesAndHangs(t *testing.T) {
	clamd := testserver.StartClamd(t, testserver.ClamdOptions{})
	section := "[clamav]\naddress = \"" + clamd.Address() + "\"\nclamd_config = \"\"\ntimeout = \"3s\"\n"
	tempfail := startFaultDaemon(t, "filters = [\"clamav\"]\n", section, nil)
	accept := startFaultDaemon(t, "filters = [\"clamav\"]\n", section+"on_error = \"accept\"\n", nil)
	daemons := []*faultDaemon{tempfail, accept}
	virus := "x\r\n" + testserver.TestString + "\r\n"
	chunk := strings.Repeat("R0lGODlhAQABAIAAAP8AAAAAACwAAAAAAQABAAACAkQBADsAbcdefghijklmnopqrstuvwxyz0123\r\n", 800)
	// scans: clean mail delivered, the test virus refused, on every daemon.
	scans := func() error {
		for _, d := range daemons {
			if r, err := oneMessage(d.port, "192.0.2.1", "hello\r\n"); r != "" || err != nil {
				return fmt.Errorf("clean message: %q %v", r, err)
			}
			if r, err := oneMessage(d.port, "192.0.2.1", virus); !strings.HasPrefix(r, "550 5.7.0 VIRUS FOUND: "+testserver.TestStringName) || err != nil {
				return fmt.Errorf("test virus: %q %v", r, err)
			}
		}
		return nil
	}
	if err := scans(); err != nil {
		t.Fatal(err)
	}
	var base []usage
	for _, d := range daemons {
		d.idle(t)
		base = append(base, d.usage(t))
	}
	want := map[*faultDaemon]string{tempfail: "451 4.3.0", accept: ""}
	check := func(what string, d *faultDaemon, r string, err error) {
		t.Helper()
		if err != nil || want[d] == "" && r != "" || !strings.HasPrefix(r, want[d]) {
			t.Errorf("%s, on_error %s: reply %q, error %v; want %q", what, map[bool]string{true: "tempfail", false: "accept"}[d == tempfail], r, err, want[d])
		}
	}

	// SIGKILL while both stream a message to clamd.
	inFlight := []*mtaSession{midMessage(t, tempfail.port, "192.0.2.2", chunk), midMessage(t, accept.port, "192.0.2.2", chunk)}
	clamd.Kill()
	for i, d := range daemons {
		r, err := inFlight[i].finish(chunk)
		check("message streamed when clamd was killed", d, r, err)
		r, err = oneMessage(d.port, "192.0.2.3", "hello\r\n")
		check("message while clamd is down", d, r, err)
		if len(d.lines("filter failed", "filter=clamav")) == 0 {
			t.Errorf("clamd's failure not logged:\n%s", d.logs)
		}
	}
	clamd.Start()
	if err := scans(); err != nil {
		t.Fatalf("clamd restarted: %v", err)
	}

	// SIGSTOP: one message streamed before, one begun after; both wait
	// for the filter's timeout, at once.
	before := []*mtaSession{midMessage(t, tempfail.port, "192.0.2.4", chunk), midMessage(t, accept.port, "192.0.2.4", chunk)}
	clamd.Hang()
	var wg sync.WaitGroup
	for i, d := range daemons {
		wg.Add(2)
		go func() {
			defer wg.Done()
			r, err := before[i].finish("")
			check("message streamed before clamd hung", d, r, err)
		}()
		go func() {
			defer wg.Done()
			r, err := oneMessage(d.port, "192.0.2.5", "hello\r\n")
			check("message while clamd hangs", d, r, err)
		}()
	}
	wg.Wait()
	for _, d := range daemons {
		if len(d.lines("filter timed out", "filter=clamav")) == 0 {
			t.Errorf("the hung clamd's time-out not logged:\n%s", d.logs)
		}
	}
	clamd.Resume()
	resumed := time.Now()
	for err := scans(); err != nil; err = scans() {
		if time.Since(resumed) > 30*time.Second {
			t.Fatalf("clamd resumed 30 s ago, and still: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("scanning again %.1f s after clamd resumed", time.Since(resumed).Seconds())

	// Killed while it holds whole messages (stopped, so that they wait
	// for its verdict): its death is noticed, not waited out.
	timedOut := map[*faultDaemon]int{}
	for _, d := range daemons {
		timedOut[d] = len(d.lines("filter timed out", "filter=clamav"))
	}
	clamd.Hang()
	for _, d := range daemons {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := oneMessage(d.port, "192.0.2.6", "hello\r\n")
			check("message whose verdict clamd owed when it was killed", d, r, err)
		}()
	}
	time.Sleep(300 * time.Millisecond) // the messages' ends sent (had they not been, the same replies are due)
	clamd.Kill()
	wg.Wait()
	for _, d := range daemons {
		if n := len(d.lines("filter timed out", "filter=clamav")); n != timedOut[d] {
			t.Errorf("clamd's death waited out as a time-out:\n%s", d.logs)
		}
	}
	clamd.Start()
	if err := scans(); err != nil {
		t.Fatalf("clamd restarted again: %v", err)
	}
	for i, d := range daemons {
		t.Logf("on_error %s: before %v, after %v", map[bool]string{true: "tempfail", false: "accept"}[d == tempfail], base[i], d.settle(t, base[i], 2))
		d.stop(t)
	}
}

// TestFaultRedisHangsAndRestarts: two daemons count messages per client
// (2 a minute) in one Redis, one with the default on_error ("accept"),
// one with on_error = "tempfail". Redis stopped (SIGSTOP): within its
// 500 ms answer time each message gets the daemon's on_error, a burst of
// sessions included; resumed, counting goes on. Redis killed: the same,
// and restarted empty, counting starts again.
func TestFaultRedisHangsAndRestarts(t *testing.T) {
	redis := testserver.StartRedis(t)
	section := func(onError string) string {
		return `[ratelimit]
backend = "` + redis.URL() + `"
timeout = "5s"
` + onError + `[[ratelimit.rule]]
name = "msg-per-client"
event = "message"
key = "client"
limit = 2
window = "1m"
`
	}
	accept := startFaultDaemon(t, "filters = [\"ratelimit\"]\n", section(""), nil)
	tempfail := startFaultDaemon(t, "filters = [\"ratelimit\"]\n", section("on_error = \"tempfail\"\n"), nil)
	daemons := []*faultDaemon{accept, tempfail}
	name := map[*faultDaemon]string{accept: "on_error accept", tempfail: "on_error tempfail"}
	client := 0
	// counts: a new client's third message in the minute is refused, on
	// each daemon.
	counts := func() error {
		for _, d := range daemons {
			client++
			addr := fmt.Sprintf("10.0.%d.%d", client/250, client%250+1)
			for i, want := range []string{"", "", "451 4.7.1"} {
				r, err := oneMessage(d.port, addr, "hello\r\n")
				if err != nil || want == "" && r != "" || !strings.HasPrefix(r, want) {
					return fmt.Errorf("%s, message %d from %s: %q %v, want %q", name[d], i+1, addr, r, err, want)
				}
			}
		}
		return nil
	}
	// countsAgain waits for counting to resume (the client pool
	// reconnects by itself).
	countsAgain := func(what string) {
		t.Helper()
		since := time.Now()
		for err := counts(); err != nil; err = counts() {
			if time.Since(since) > 20*time.Second {
				t.Fatalf("%s, counting did not resume: %v", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("%s: counting again after %.1f s", what, time.Since(since).Seconds())
	}
	// fails: every message gets the daemon's on_error, a burst of ten
	// sessions from one client (over its limit) at once.
	fails := func(what string) {
		t.Helper()
		want := map[*faultDaemon]string{accept: "", tempfail: "451 4.3.0"}
		var wg sync.WaitGroup
		for _, d := range daemons {
			client++
			addr := fmt.Sprintf("10.1.%d.%d", client/250, client%250+1)
			for range 10 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r, err := oneMessage(d.port, addr, "hello\r\n")
					if err != nil || want[d] == "" && r != "" || !strings.HasPrefix(r, want[d]) {
						t.Errorf("%s, %s: %q %v, want %q", what, name[d], r, err, want[d])
					}
				}()
			}
		}
		wg.Wait()
		for _, d := range daemons {
			if len(d.lines("filter failed", "filter=ratelimit")) == 0 {
				t.Errorf("%s, %s: Redis's failure not logged as filter failed:\n%s", what, name[d], d.logs)
			}
		}
	}
	if err := counts(); err != nil {
		t.Fatal(err)
	}
	var base []usage
	for _, d := range daemons {
		base = append(base, d.warmUsage(t, 10))
	}

	redis.Pause()
	fails("Redis stopped")
	redis.Resume()
	countsAgain("Redis resumed")

	redis.Kill()
	fails("Redis killed")
	redis.Start()
	countsAgain("Redis restarted")

	for i, d := range daemons {
		if l := d.lines("filter timed out"); len(l) != 0 {
			t.Errorf("%s: a Redis failure waited for the filter's timeout:\n%s", name[d], strings.Join(l, "\n"))
		}
		t.Logf("%s: before %v, after %v", name[d], base[i], d.settle(t, base[i], 2))
		d.stop(t)
	}
}

// TestFaultDNSServerHangs: the DNS blocklist's server stops answering
// (SIGSTOP). A client listed before stays refused (the answer is
// cached); one listed but not yet asked about, and bursts of unlisted
// ones, are accepted within dnsbl_timeout (A DNS failure never refuses
// mail, on_error "accept"), logged as failures, not as the filter's
// timeout; goroutines and descriptors do not pile up. Once the
// server answers again, the listed client is refused.
func TestFaultDNSServerHangs(t *testing.T) {
	dns := testserver.StartDNS(t, "bl.test", map[string]string{"2.0.0.127": "127.0.0.2", "3.0.0.127": "127.0.0.2"})
	d := startFaultDaemon(t, "filters = [\"access\"]\n", `[access]
dnsbl = ["bl.test"]
dns_server = "`+dns.Server()+`"
dnsbl_timeout = "500ms"
timeout = "5s"
`, nil)
	const listed = "550 5.7.1 Service unavailable; client [127.0.0.%d] blocked using bl.test"
	expectVerdict(t, d.port, "127.0.0.2", "hello\r\n", fmt.Sprintf(listed, 2))
	base := d.warmUsage(t, 10)

	dns.Pause()
	defer dns.Resume()
	expectVerdict(t, d.port, "127.0.0.2", "hello\r\n", fmt.Sprintf(listed, 2))
	expectVerdict(t, d.port, "127.0.0.3", "hello\r\n", "")
	for round := range 3 {
		var wg sync.WaitGroup
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				addr := fmt.Sprintf("10.2.%d.%d", round, i+1)
				if r, err := oneMessage(d.port, addr, "hello\r\n"); r != "" || err != nil {
					t.Errorf("%s with the DNS server hung: %q %v", addr, r, err)
				}
			}()
		}
		wg.Wait()
	}
	// One scrape (it waits 2 s for its own DNS probe now): the sessions'
	// lookups are over, none waits on.
	hung := d.usage(t)
	t.Logf("with the DNS server hung, after three bursts of 10 sessions: %v", hung)
	if hung.goroutines > base.goroutines+4 || hung.fds > base.fds+2 {
		t.Errorf("goroutines or descriptors pile up while the DNS server hangs: %v, before %v", hung, base)
	}
	if n := len(d.lines("filter failed", "filter=access", "bl.test")); n != 31 {
		t.Errorf("%d DNS failures logged, want one per unanswered client (31)", n)
	}
	if l := d.lines("filter timed out"); len(l) != 0 {
		t.Errorf("a DNS failure waited for the filter's timeout:\n%s", strings.Join(l, "\n"))
	}

	dns.Resume()
	resumed := time.Now()
	for {
		r, err := oneMessage(d.port, "127.0.0.3", "hello\r\n")
		if err != nil {
			t.Fatal(err)
		}
		if r == fmt.Sprintf(listed, 3) {
			break
		}
		if time.Since(resumed) > 20*time.Second {
			t.Fatalf("the DNS server answers again, and the listed client: %q", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the listed client refused again %.1f s after the DNS server resumed", time.Since(resumed).Seconds())
	t.Logf("before %v, after %v", base, d.settle(t, base, 2))
	d.stop(t)
}

// TestFaultCaptureDiskFills: capture copies every message, refused ones
// too, into a 1 MB tmpfs of its own. A copy that fills the disk midway
// is lost, its partial file removed (which frees the space again: the
// next small copy is written); with the disk full, no copy is written.
// Throughout, every message gets the verdict it would get without
// capture, and the daemon runs on; with room again, copies resume.
func TestFaultCaptureDiskFills(t *testing.T) {
	dir := t.TempDir()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("mounting a tmpfs needs root")
		}
		t.Skip("mounting a tmpfs needs root")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	copies := filepath.Join(dir, "maildir")
	d := startFaultDaemon(t, "filters = [\"virus\", \"capture\"]\n", `[virus]
signatures = "signatures"
[capture]
switch = "capture.on"
dir = "`+copies+`"
include_rejected = true
`, map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n", "capture.on": ""})
	line := "R0lGODlhAQABAIAAAP8AAAAAACwAAAAAAQABAAACAkQBADsAbcdefghijklmnopqrstuvwxyz0123\r\n"
	small := strings.Repeat(line, 100) + "END\r\n"
	large := strings.Repeat(line, 4000) + "END\r\n" // 312 KB
	worm := "x\r\n" + sobig + "\r\n"
	written := func() int {
		entries, err := os.ReadDir(filepath.Join(copies, "new"))
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	noPartials := func(what string) {
		t.Helper()
		if tmp, _ := os.ReadDir(filepath.Join(copies, "tmp")); len(tmp) != 0 {
			t.Errorf("%s: %d partial copies left in tmp/", what, len(tmp))
		}
	}
	failed := func() int {
		return int(d.metrics(t)[`mailguard_capture_writes_total{result="failed"}`])
	}
	expectVerdict(t, d.port, "192.0.2.1", small, "")
	expectVerdict(t, d.port, "192.0.2.1", worm, "550 5.7.0 VIRUS FOUND")
	if n := written(); n != 2 {
		t.Fatalf("%d copies with room on the disk, want 2", n)
	}
	base := d.warmUsage(t, 4)

	// Fill the disk but for 100 KB: the large copy fills it midway.
	filler := filepath.Join(dir, "filler")
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int(st.Bavail) * int(st.Bsize)
	if err := os.WriteFile(filler, make([]byte, free-100<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	before := written()
	expectVerdict(t, d.port, "192.0.2.2", large, "")
	noPartials("a copy that filled the disk")
	if n := failed(); n != 1 {
		t.Errorf("%d failed copies counted, want 1", n)
	}
	expectVerdict(t, d.port, "192.0.2.3", small, "")
	if n := written(); n != before+1 {
		t.Errorf("after a failed copy, a small one that fits: %d copies written, want %d", n-before, 1)
	}

	// Full: nothing is copied, nothing changes a verdict.
	f, err := os.OpenFile(filler, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 1<<20)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the disk: %v", err)
	}
	f.Close()
	before = written()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, want := small, ""
			if i%2 == 1 {
				body, want = worm, "550 5.7.0 VIRUS FOUND"
			}
			if r, err := oneMessage(d.port, fmt.Sprintf("192.0.2.%d", 10+i), body); err != nil || want == "" && r != "" || !strings.HasPrefix(r, want) {
				t.Errorf("with the disk full: %q %v, want %q", r, err, want)
			}
		}()
	}
	wg.Wait()
	noPartials("the disk full")
	if n := written(); n != before {
		t.Errorf("%d copies written to a full disk", n-before)
	}
	if n := failed(); n != 5 {
		t.Errorf("%d failed copies counted, want 5", n)
	}
	if l := d.lines("capture:", "message not copied, mail flows on", "no space left on device"); len(l) != 5 {
		t.Errorf("%d log lines say a copy was lost to a full disk, want 5:\n%s", len(l), d.logs)
	}

	// Room again: copies resume, whole.
	os.Remove(filler)
	before = written()
	expectVerdict(t, d.port, "192.0.2.20", large, "")
	if n := written(); n != before+1 {
		t.Fatalf("with room again, %d copies written, want 1", n-before)
	}
	entries, _ := os.ReadDir(filepath.Join(copies, "new"))
	latest := ""
	for _, e := range entries {
		if b, err := os.ReadFile(filepath.Join(copies, "new", e.Name())); err == nil && strings.Contains(string(b), "192.0.2.20") {
			latest = string(b)
		}
	}
	if !strings.HasSuffix(latest, large) {
		t.Errorf("the copy after the disk had room again is not whole (%d bytes)", len(latest))
	}
	noPartials("room again")
	t.Logf("before %v, after %v", base, d.settle(t, base, 2))
	d.stop(t)
}

// TestFaultGarbageSignaturesThenSIGHUP: the signature file replaced by
// garbage of several kinds, each followed by SIGHUP. Each reload is
// refused with a log line naming the file and what is wrong, the
// metrics say the last reload failed, and the running signatures go on
// refusing the worm; a good file then loads.
func TestFaultGarbageSignaturesThenSIGHUP(t *testing.T) {
	good := "WORM_SOBIG.B =\n" + sobig + "\n"
	d := startFaultDaemon(t, "max_file_size = \"1M\"\n", "[virus]\nsignatures = \"signatures\"\n", map[string]string{"signatures": good})
	sigs := filepath.Join(d.dir, "signatures")
	random := make([]byte, 64<<10)
	for i := range random {
		random[i] = byte(i*7919 + i>>8*31) // bytes of every value, NULs and line ends among them
	}
	garbage := []struct {
		name, why string
		write     func() error
	}{
		{"random bytes", "signatures:1: NUL byte in line", func() error { return os.WriteFile(sigs, random, 0o644) }},
		{"empty", "no signatures", func() error { return os.WriteFile(sigs, nil, 0o644) }},
		{"cut off in the pattern", "signatures:1: signature WORM_SOBIG.B: pattern is 10 bytes, the minimum is 16",
			func() error { return os.WriteFile(sigs, []byte("WORM_SOBIG.B =\n"+sobig[:10]), 0o644) }},
		{"a byte-order mark", "signatures:1: the file starts with a UTF-8 byte-order mark",
			func() error { return os.WriteFile(sigs, []byte("\xef\xbb\xbf"+good), 0o644) }},
		{"too large", "file too large: 1740000 bytes, at most 1048576", func() error { return os.WriteFile(sigs, []byte(strings.Repeat(good, 20000)), 0o644) }},
		{"gone", "no such file", func() error { return os.Remove(sigs) }},
	}
	for i, g := range garbage {
		if err := g.write(); err != nil {
			t.Fatal(err)
		}
		d.cmd.Process.Signal(syscall.SIGHUP)
		for deadline := time.Now().Add(10 * time.Second); len(d.lines("reload failed")) <= i; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no reload failure logged:\n%s", g.name, d.logs)
			}
		}
		line := d.lines("reload failed")[i]
		if !strings.Contains(line, sigs) && !strings.Contains(line, "signatures:") || !strings.Contains(line, g.why) {
			t.Errorf("%s: the log line does not say %q of the file:\n%s", g.name, g.why, line)
		}
		t.Logf("%s: %.300s", g.name, line[strings.Index(line, "msg="):])
		m := d.metrics(t)
		if m["mailguard_config_last_reload_success"] != 0 || m[`mailguard_reloads_total{result="failed"}`] != float64(i+1) {
			t.Errorf("%s: metrics: last reload success %v, failed reloads %v", g.name, m["mailguard_config_last_reload_success"], m[`mailguard_reloads_total{result="failed"}`])
		}
		expectVerdict(t, d.port, "192.0.2.1", "x\r\n"+sobig+"\r\n", "550 5.7.0 VIRUS FOUND")
		expectVerdict(t, d.port, "192.0.2.1", "hello\r\n", "")
	}
	os.WriteFile(sigs, []byte(good+"WORM_KLEZ.H =\n"+klez+"\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitForLog(t, d.daemon, "msg=reloaded")
	expectVerdict(t, d.port, "192.0.2.1", "x\r\n"+klez+"\r\n", "550 5.7.0 VIRUS FOUND")
	if m := d.metrics(t); m["mailguard_config_last_reload_success"] != 1 {
		t.Errorf("a good file loaded, and the metrics say the last reload failed")
	}
	d.stop(t)
}

// load is SMTP sessions of three messages each (clean, worm, clean)
// from several connections at once, each verdict checked.
type load struct {
	done         atomic.Int64 // messages answered
	mu           sync.Mutex
	wrong, errs  []string
	stop         chan struct{}
	wg           sync.WaitGroup
	stopOnErrors bool
}

// startLoad starts workers connections; with stopOnErrors a worker ends
// at its first error (the daemon is stopping), else it records it and
// goes on.
func startLoad(port, workers int, stopOnErrors bool) *load {
	l := &load{stop: make(chan struct{}), stopOnErrors: stopOnErrors}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			client := fmt.Sprintf("192.0.2.%d", 100+w)
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				if err := l.session(port, client); err != nil {
					l.mu.Lock()
					l.errs = append(l.errs, err.Error())
					l.mu.Unlock()
					if l.stopOnErrors {
						return
					}
				}
			}
		}()
	}
	return l
}

func (l *load) session(port int, client string) error {
	m, err := openSession(port)
	if err != nil {
		return err
	}
	defer m.s.Close()
	if r, err := m.greet(client); r != "" || err != nil {
		return fmt.Errorf("greeting: %q %v", r, err)
	}
	for i := range 3 {
		body, want := "hello\r\n", ""
		if i == 1 {
			body, want = "x\r\n"+sobig+"\r\n", "550 5.7.0 VIRUS FOUND"
		}
		r, err := m.message(body)
		if err != nil {
			return err
		}
		l.done.Add(1)
		if want == "" && r != "" || !strings.HasPrefix(r, want) {
			l.mu.Lock()
			l.wrong = append(l.wrong, fmt.Sprintf("%q, want %q", r, want))
			l.mu.Unlock()
		}
	}
	return nil
}

// waitFor waits until n more messages have been answered since from.
func (l *load) waitFor(t *testing.T, from int64, n int64) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); l.done.Load() < from+n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the load stalled at %d messages: %v", l.done.Load(), l.errs)
		}
	}
}

// end stops the workers and waits for them.
func (l *load) end() {
	close(l.stop)
	l.wg.Wait()
}

// summaries adds up the daemon's summary lines: messages begun and
// those aborted.
func summaries(d *daemon) (messages, aborted int) {
	for _, l := range d.lines("msg=summary") {
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "messages="); ok {
				n, _ := strconv.Atoi(v)
				messages += n
			}
			if v, ok := strings.CutPrefix(f, "verdicts.aborted="); ok {
				n, _ := strconv.Atoi(v)
				aborted += n
			}
		}
	}
	return messages, aborted
}

const loadConfig = `[ratelimit]
[[ratelimit.rule]]
name = "sessions"
event = "concurrency"
key = "client"
limit = 50
[[ratelimit.rule]]
name = "messages"
event = "message"
key = "client"
limit = 1000000
window = "1h"
[virus]
signatures = "signatures"
`

// TestFaultSIGHUPUnderLoad: eight connections send sessions of three
// messages while the signature file changes and SIGHUP follows ten
// times, each while messages flow. Every message gets its verdict, no
// session fails, and every message the daemon began was answered.
func TestFaultSIGHUPUnderLoad(t *testing.T) {
	sigs := map[bool]string{
		false: "WORM_SOBIG.B =\n" + sobig + "\n",
		true:  "WORM_SOBIG.B =\n" + sobig + "\nWORM_KLEZ.H =\n" + klez + "\n",
	}
	d := startFaultDaemon(t, "filters = [\"ratelimit\", \"virus\"]\n", loadConfig, map[string]string{"signatures": sigs[false]})
	l := startLoad(d.port, 8, false)
	const reloads = 10
	for i := range reloads {
		l.waitFor(t, l.done.Load(), 24)
		os.WriteFile(filepath.Join(d.dir, "signatures"), []byte(sigs[i%2 == 0]), 0o644)
		d.cmd.Process.Signal(syscall.SIGHUP)
		for deadline := time.Now().Add(10 * time.Second); len(d.lines("msg=reloaded")) <= i; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("reload %d not done:\n%s", i+1, d.logs)
			}
		}
	}
	l.waitFor(t, l.done.Load(), 24)
	l.end()
	t.Logf("%d messages answered across %d reloads; %d wrong verdicts, %d errors", l.done.Load(), reloads, len(l.wrong), len(l.errs))
	if len(l.wrong) != 0 || len(l.errs) != 0 {
		t.Fatalf("wrong verdicts: %v\nerrors: %v", l.wrong, l.errs)
	}
	d.idle(t)
	m := d.metrics(t)
	if m["mailguard_messages_total"] != float64(l.done.Load()) || m[`mailguard_verdicts_total{filter="",outcome="aborted"}`] != 0 || m[`mailguard_reloads_total{result="ok"}`] != reloads {
		t.Errorf("the daemon began %v messages (%d answered), %v aborted, %v reloads", m["mailguard_messages_total"], l.done.Load(),
			m[`mailguard_verdicts_total{filter="",outcome="aborted"}`], m[`mailguard_reloads_total{result="ok"}`])
	}
	d.stop(t)
}

// TestFaultSIGTERMUnderLoad: three messages are halfway through their
// body and four connections send sessions of three messages when
// SIGTERM arrives. New connections are refused at once; the three
// messages, finished after that, get their verdicts, and so does every
// message of the load the daemon had begun (its final summary counts
// them: none aborted); the daemon exits with status 0.
func TestFaultSIGTERMUnderLoad(t *testing.T) {
	d := startFaultDaemon(t, "filters = [\"ratelimit\", \"virus\"]\ndrain_timeout = \"20s\"\n", loadConfig,
		map[string]string{"signatures": "WORM_SOBIG.B =\n" + sobig + "\n"})
	held := []*mtaSession{
		midMessage(t, d.port, "192.0.2.1", "first half\r\n"),
		midMessage(t, d.port, "192.0.2.2", "first half\r\n"),
		midMessage(t, d.port, "192.0.2.3", "first half\r\n"),
	}
	for deadline := time.Now().Add(10 * time.Second); d.metrics(t)["mailguard_messages_total"] != 3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon has not begun the held messages:\n%s", d.logs)
		}
	}
	l := startLoad(d.port, 4, true)
	l.waitFor(t, 0, 30)

	d.cmd.Process.Signal(syscall.SIGTERM)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", d.port))
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("new connections still accepted 10 s after SIGTERM")
		}
	}
	for i, rest := range []string{"second half\r\n", sobig + "\r\n", "second half\r\n"} {
		want := map[bool]string{true: "550 5.7.0 VIRUS FOUND", false: ""}[i == 1]
		if r, err := held[i].finish(rest); err != nil || want == "" && r != "" || !strings.HasPrefix(r, want) {
			t.Errorf("message %d, in flight at SIGTERM: %q %v, want %q", i+1, r, err, want)
		}
	}
	l.wg.Wait() // each worker ends at its first error: the connection closed
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, d.logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit after SIGTERM:\n%s", d.logs)
	}
	if strings.Contains(d.logs.String(), "DATA RACE") {
		t.Fatalf("the race detector found a race:\n%s", d.logs)
	}
	begun, aborted := summaries(d.daemon)
	answered := int(l.done.Load()) + len(held)
	t.Logf("%d messages answered (%d of the load, %d in flight at SIGTERM), %d begun by the daemon, %d aborted; %d wrong verdicts; load ended by %d closed connections",
		answered, l.done.Load(), len(held), begun, aborted, len(l.wrong), len(l.errs))
	if begun != answered || aborted != 0 || len(l.wrong) != 0 {
		t.Errorf("every message begun must be answered: begun %d, answered %d, aborted %d, wrong %v\n%s", begun, answered, aborted, l.wrong, d.logs)
	}
}
