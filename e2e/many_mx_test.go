package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/smtp"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestManyMXSharedLimit: three MX hosts (a private Postfix each, with its
// own mailguard) share one Redis; clients spread their mail across all
// three at once. A limit of N messages per client per hour admits N in
// total, wherever they land. Redis is restarted mid-run (stopped, as a
// service restart does, saving its counts): while it is away mail flows
// (on_error = "accept"), every admission over the limit is a logged
// failure, and when it is back the counts it saved still hold. Every
// message a Postfix accepted is delivered, once; every one refused got a
// 4xx at MAIL FROM. scripts/many-mx is the long version, with figures.
func TestManyMXSharedLimit(t *testing.T) {
	const (
		limit   = 5
		clients = 6
		hosts   = 3
	)
	redis := startPersistentRedis(t)
	config := fmt.Sprintf(`listen = "LISTEN"
filters = ["ratelimit"]
[ratelimit]
backend = "redis://127.0.0.1:%d/0"
[[ratelimit.rule]]
name = "msgs-per-client"
event = "message"
key = "client"
limit = %d
window = "1h"
`, redis.port, limit)
	// The three Postfix instances start at once: each start takes
	// seconds on a loaded machine, mostly waiting.
	var mx []*manyMXHost
	ports := freePorts(t, hosts)
	for i := 0; i < hosts; i++ {
		d := startMailguard(t, config, nil)
		p := preparePostfix(t, ports[i], false, fmt.Sprintf("myhostname = mx%d.test.example\n", i+1),
			fmt.Sprintf("inet:127.0.0.1:%d", milterPort(t, d.port, "postfix")), "user@example.edu")
		mx = append(mx, &manyMXHost{mailguard: d, postfix: p})
	}
	t.Cleanup(func() { // and stop at once, before each one's own cleanup
		var wg sync.WaitGroup
		for _, h := range mx {
			wg.Add(1)
			go func() {
				defer wg.Done()
				exec.Command("postfix", "-c", h.postfix.dir, "stop").Run()
				waitForMasterExit(h.postfix.dir)
			}()
		}
		wg.Wait()
	})
	launched := make(chan error, hosts)
	for _, h := range mx {
		go func() { launched <- h.postfix.launch() }()
	}
	for range mx {
		if err := <-launched; err != nil {
			t.Fatal(err)
		}
	}
	for i, h := range mx {
		h.postfix.waitReady(t)
		h.postfix.checkBanner(t, fmt.Sprintf("mx%d.test.example", i+1))
	}
	start := time.Now()
	var (
		mu   sync.Mutex
		all  []manyMXAttempt
		seq  int
		wave = func(phase string, perClient int) []manyMXAttempt {
			var wg sync.WaitGroup
			var got []manyMXAttempt
			for c := 0; c < clients; c++ {
				for k := 0; k < perClient; k++ {
					seq++
					a := manyMXAttempt{phase: phase, client: fmt.Sprintf("127.0.1.%d", c+1), host: (c + k) % hosts, seq: seq}
					wg.Add(1)
					go func() {
						defer wg.Done()
						a.send(mx[a.host].postfix.port)
						mu.Lock()
						got = append(got, a)
						mu.Unlock()
					}()
				}
			}
			wg.Wait()
			all = append(all, got...)
			return got
		}
	)
	failures := func() []int {
		n := make([]int, hosts)
		for i, h := range mx {
			n[i] = len(h.mailguard.lines("filter failed", "filter=ratelimit")) + len(h.mailguard.lines("filter timed out", "filter=ratelimit"))
		}
		return n
	}

	// Redis up: each client's attempts across the three hosts, at once.
	// A call to Redis that failed (none should, but a loaded machine may
	// stall one past its 500 ms) admits its message.
	up := wave("up", limit+3)
	upFailures := sum(failures())
	most := limit*windowsTouched(start, time.Now(), time.Hour) + upFailures
	for c, n := range admittedPerClient(up) {
		if n < limit || n > most {
			t.Errorf("client %s: %d messages admitted across %d hosts, want %d (the shared limit; %d ratelimit failures)", c, n, hosts, limit, upFailures)
		}
	}

	// Redis stopped: mail flows, each admission a logged failure.
	redis.stop()
	outage := wave("outage", 2)
	if n := sum(values(admittedPerClient(outage))); n != len(outage) {
		t.Errorf("with Redis away and on_error = accept, %d of %d messages admitted", n, len(outage))
	}
	atOutage := failures()
	if sum(atOutage)-upFailures < len(outage) {
		t.Errorf("%d ratelimit failures logged for %d messages sent while Redis was away", sum(atOutage)-upFailures, len(outage))
	}

	// Redis back with the counts it saved: every client is at its limit,
	// so nothing is admitted but through a failure (a host still
	// reconnecting).
	redis.start()
	back := wave("back", 3)
	backFailures := sum(failures()) - sum(atOutage)
	admittedBack := sum(values(admittedPerClient(back)))
	if admittedBack > backFailures {
		t.Errorf("after the restart, %d messages admitted over the saved counts, but only %d failures logged", admittedBack, backFailures)
	}
	if admittedBack == len(back) && backFailures < len(back) {
		t.Errorf("after the restart every message was admitted: the counts did not survive it")
	}

	// What the senders saw: 250 after the dot, or a 4xx/5xx at MAIL FROM
	// for the limit; nothing else.
	accepted := map[int]int{} // seq → host
	perHost := make([][2]int, hosts)
	for _, a := range all {
		switch {
		case a.accepted:
			accepted[a.seq] = a.host
			perHost[a.host][0]++
		case a.err != nil:
			t.Errorf("message %d from %s to mx%d: no SMTP reply: %v", a.seq, a.client, a.host+1, a.err)
		case a.stage != "mail" || a.code != 451 || !strings.Contains(a.text, "4.7.1 Rate limit exceeded"):
			t.Errorf("message %d from %s to mx%d: refused at %s with %d %s, want 451 4.7.1 at MAIL FROM", a.seq, a.client, a.host+1, a.stage, a.code, a.text)
		default:
			perHost[a.host][1]++
		}
	}

	// Every accepted message delivered, once, by the host that accepted
	// it; none of the refused ones.
	for i, h := range mx {
		want := perHost[i][0]
		got := h.postfix.deliveredSeqs(t, want)
		if len(got) != want {
			t.Errorf("mx%d: %d messages delivered, %d accepted", i+1, len(got), want)
		}
		seen := map[int]bool{}
		for _, s := range got {
			if host, ok := accepted[s]; !ok || host != i || seen[s] {
				t.Errorf("mx%d delivered message %d: accepted by mx%d (%v), seen before: %v", i+1, s, host+1, ok, seen[s])
			}
			seen[s] = true
		}
		if out, _ := exec.Command("postqueue", "-c", h.postfix.dir, "-p").CombinedOutput(); !strings.Contains(string(out), "Mail queue is empty") {
			t.Errorf("mx%d's queue is not empty:\n%s", i+1, out)
		}
		t.Logf("mx%d: %d accepted and delivered, %d refused with 451 4.7.1", i+1, want, perHost[i][1])
	}
	t.Logf("limit %d per client: Redis up %d of %d admitted (%d failures); Redis away %d of %d (%d failures logged); Redis back %d of %d (%d failures)",
		limit, sum(values(admittedPerClient(up))), len(up), upFailures, sum(values(admittedPerClient(outage))), len(outage), sum(atOutage)-upFailures,
		admittedBack, len(back), backFailures)
}

// manyMXHost is one MX host: a Postfix and its mailguard.
type manyMXHost struct {
	mailguard *daemon
	postfix   *postfix
}

// checkBanner fails the test unless every one of a few connections to
// the port meets this instance's banner: a port picked as free may be
// taken meanwhile by another Postfix (another test's), and Postfix's
// smtpd shares a port with another instance on it instead of failing to
// start. (The probes come from 127.0.0.1 and send no MAIL FROM: the
// message limit does not count them.)
func (p *postfix) checkBanner(t *testing.T, host string) {
	t.Helper()
	for i := 0; i < 4; i++ {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p.port), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		banner, err := textproto.NewConn(c).ReadLine()
		c.Close()
		if err != nil || !strings.HasPrefix(banner, "220 "+host+" ") {
			t.Fatalf("port %d, meant for %s, answers %q (%v): another Postfix listens there too", p.port, host, banner, err)
		}
	}
}

// manyMXAttempt is one message sent, and what the sender was told.
type manyMXAttempt struct {
	phase, client string
	host, seq     int
	accepted      bool
	stage         string // where it was refused
	code          int
	text          string
	err           error // no SMTP reply at all
}

// send sends one message from the attempt's client address to a Postfix
// on port, recording the reply.
func (a *manyMXAttempt) send(port int) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(a.client)}, Timeout: 10 * time.Second}
	conn, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		a.err = err
		return
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	c, err := smtp.NewClient(conn, "127.0.0.1")
	if err != nil {
		a.refused("banner", err)
		return
	}
	defer c.Close()
	if err := c.Hello("client.example.org"); err != nil {
		a.refused("helo", err)
		return
	}
	if err := c.Mail("sender@example.org"); err != nil {
		a.refused("mail", err)
		return
	}
	if err := c.Rcpt("user@example.edu"); err != nil {
		a.refused("rcpt", err)
		return
	}
	w, err := c.Data()
	if err != nil {
		a.refused("data", err)
		return
	}
	fmt.Fprintf(w, "From: sender@example.org\r\nTo: user@example.edu\r\nSubject: many MX %d\r\nX-Many-MX-Seq: %d\r\n\r\nmessage %d from %s\r\n", a.seq, a.seq, a.seq, a.client)
	if err := w.Close(); err != nil {
		a.refused("dot", err)
		return
	}
	a.accepted = true
	c.Quit()
}

func (a *manyMXAttempt) refused(stage string, err error) {
	var te *textproto.Error
	if errors.As(err, &te) {
		a.stage, a.code, a.text = stage, te.Code, te.Msg
		return
	}
	a.err = fmt.Errorf("at %s: %w", stage, err)
}

func admittedPerClient(as []manyMXAttempt) map[string]int {
	n := map[string]int{}
	for _, a := range as {
		if a.accepted {
			n[a.client]++
		} else {
			n[a.client] += 0
		}
	}
	return n
}

func values(m map[string]int) []int {
	var v []int
	for _, n := range m {
		v = append(v, n)
	}
	return v
}

func sum(v []int) int {
	s := 0
	for _, n := range v {
		s += n
	}
	return s
}

// windowsTouched is how many fixed windows of the counter (index
// UnixNano / window) the span from a to b falls in: a limit of N per
// window admits at most N in each.
func windowsTouched(a, b time.Time, window time.Duration) int {
	return int(b.UnixNano()/int64(window)-a.UnixNano()/int64(window)) + 1
}

var manyMXSeq = regexp.MustCompile(`(?m)^X-Many-MX-Seq: (\d+)\r?$`)

// deliveredSeqs returns the X-Many-MX-Seq of every message in the Maildir
// of user@example.edu, waiting up to 20 s for want of them.
func (p *postfix) deliveredSeqs(t *testing.T, want int) []int {
	t.Helper()
	var seqs []int
	deadline := time.Now().Add(20 * time.Second)
	for {
		seqs = seqs[:0]
		dir := filepath.Join(p.mail, "user", "new")
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				continue
			}
			m := manyMXSeq.FindSubmatch(b)
			if m == nil {
				t.Errorf("delivered %s without a sequence header", e.Name())
				continue
			}
			n, _ := strconv.Atoi(string(m[1]))
			seqs = append(seqs, n)
		}
		if len(seqs) >= want || time.Now().After(deadline) {
			return seqs
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// persistentRedis is a redis-server that saves its data when stopped
// (as a service restart does, with save points configured, Debian's
// default) and loads it when started again.
type persistentRedis struct {
	t    *testing.T
	port int
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	out  *lockedBuffer
}

func startPersistentRedis(t *testing.T) *persistentRedis {
	t.Helper()
	requireCommands(t, map[string]string{"redis-server": "redis-server"})
	r := &persistentRedis{t: t, port: freePort(t), dir: t.TempDir()}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *persistentRedis) start() {
	r.t.Helper()
	r.out, r.done = &lockedBuffer{}, make(chan struct{})
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--dir", r.dir, "--dbfilename", "counts.rdb", "--save", "3600 1", "--appendonly", "no")
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(r.cmd, r.done)
	waitForPort(r.t, r.port, "redis-server", r.out.String)
}

// stop stops the server as a service manager does (SIGTERM: it saves,
// then exits) and waits for it.
func (r *persistentRedis) stop() {
	select {
	case <-r.done:
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-r.done
	}
}
