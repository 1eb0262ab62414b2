package capture

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) lines(words ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range strings.Split(l.b.String(), "\n") {
		all := line != ""
		for _, w := range words {
			all = all && strings.Contains(line, w)
		}
		if all {
			n++
		}
	}
	return n
}

// Turning the switch on or off is logged, with the folder, when the
// daemon notices it (the first message after it): a legal hold needs the
// record of when copying started and stopped. A reload's new filter does
// not announce again what its predecessor saw, and says the state in its
// summary (the reload line).
func TestSwitchIsAudited(t *testing.T) {
	e := setup(t, Options{Recipients: []string{"held@example.edu"}})
	log := &lockedLog{}
	e.f.opts.Log = slog.New(slog.NewTextHandler(log, nil))
	if s := e.f.Summary(); !strings.HasPrefix(s, "off (no switch file "+e.sw+"); copies would go to "+e.dir) {
		t.Fatalf("summary while off: %q", s)
	}
	e.send("a@example.org", []string{"held@example.edu"}, []byte("before\r\n"), true)

	e.switchOn(t)
	if log.lines("capture switched on") != 0 {
		t.Fatal("logged before the daemon looked")
	}
	e.send("a@example.org", []string{"held@example.edu"}, []byte("held\r\n"), true)
	e.send("a@example.org", []string{"held@example.edu"}, []byte("held\r\n"), true)
	if n := log.lines("capture switched on", "dir="+e.dir, "switch="+e.sw, `selection="messages to 1 recipient and from 0 sender patterns"`); n != 1 {
		t.Fatalf("%d lines for the switch turned on:\n%s", n, log.b.String())
	}
	if s := e.f.Summary(); !strings.HasPrefix(s, "ON: copying messages to 1 recipient and from 0 sender patterns into "+e.dir) {
		t.Fatalf("summary while on: %q", s)
	}

	// Switched off, then a reload: the successor, which shares what its
	// predecessor saw, notices and says so, once.
	e.switchOff()
	next, err := New(Options{Dir: e.dir, Switch: e.sw, Now: e.f.opts.Now, Log: e.f.opts.Log, Predecessor: e.f})
	if err != nil {
		t.Fatal(err)
	}
	if s := next.Summary(); !strings.HasPrefix(s, "off") {
		t.Fatalf("reload line: %q", s)
	}
	next.Stages() // the old filter is retired: it looks no more
	if n := log.lines("capture switched off", "dir="+e.dir); n != 1 {
		t.Fatalf("%d lines for the switch turned off across a reload:\n%s", n, log.b.String())
	}
	if n := log.lines("capture switched on"); n != 1 {
		t.Fatalf("the switch on announced again:\n%s", log.b.String())
	}
}
