package e2e

// Fault injection against the real binary (faults_*_test.go): the MTA
// hanging up at every stage (here), clamd, Redis and the DNS server
// dying or hanging (servers), the capture disk filling and a signature
// file replaced by garbage (files), and signals under load (signals).
// Each test counts the daemon's goroutines and open descriptors (its own
// metrics, /proc) before and after, so a leak shows as a count that does
// not come back. docs/reliability/faults.md lists them.

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

// quiet waits until no milter connection of the daemon's is open or
// half-closed (a session closes its socket once it has released what it
// held). Unlike idle it needs no scrape, which waits for the health
// probes of servers that may be hung.
func (d *faultDaemon) quiet(t *testing.T) {
	t.Helper()
	local := fmt.Sprintf(":%04X", d.port)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		table, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", d.cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		open := 0
		for _, line := range strings.Split(string(table), "\n") {
			// sl local_address rem_address st: 01 established, 08 close wait
			if f := strings.Fields(line); len(f) > 3 && strings.HasSuffix(f[1], local) && (f[3] == "01" || f[3] == "08") {
				open++
			}
		}
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d milter connections still open:\n%s", open, d.logs)
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
	d.waitExit(t)
}

// waitExit requires the daemon, already told to stop, to exit cleanly
// within the drain.
func (d *faultDaemon) waitExit(t *testing.T) {
	t.Helper()
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
