package e2e

// Faults of the servers the filters ask: clamd, Redis, DNS.

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"mailguard/internal/testserver"
)

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
		d.quiet(t) // the next burst finds the goroutines of this one waiting for work
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
