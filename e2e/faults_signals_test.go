package e2e

// SIGHUP and SIGTERM under load.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

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

const faultLoadConfig = `[ratelimit]
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
	d := startFaultDaemon(t, "filters = [\"ratelimit\", \"virus\"]\n", faultLoadConfig, map[string]string{"signatures": sigs[false]})
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
	d := startFaultDaemon(t, "filters = [\"ratelimit\", \"virus\"]\ndrain_timeout = \"20s\"\n", faultLoadConfig,
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
	d.waitExit(t)
	begun, aborted := summaries(d.daemon)
	answered := int(l.done.Load()) + len(held)
	t.Logf("%d messages answered (%d of the load, %d in flight at SIGTERM), %d begun by the daemon, %d aborted; %d wrong verdicts; load ended by %d closed connections",
		answered, l.done.Load(), len(held), begun, aborted, len(l.wrong), len(l.errs))
	if begun != answered || aborted != 0 || len(l.wrong) != 0 {
		t.Errorf("every message begun must be answered: begun %d, answered %d, aborted %d, wrong %v\n%s", begun, answered, aborted, l.wrong, d.logs)
	}
}
