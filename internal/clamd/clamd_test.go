package clamd

import (
	"context"
	"errors"
	"fmt"
	"mailguard/internal/clamd/clamdtest"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var ctx = context.Background()

func TestParseAddress(t *testing.T) {
	good := map[string]Address{
		"unix:/run/clamav/clamd.ctl": {"unix", "/run/clamav/clamd.ctl"},
		"/run/clamd.sock":            {"unix", "/run/clamd.sock"},
		"tcp:127.0.0.1:3310":         {"tcp", "127.0.0.1:3310"},
		"tcp:[::1]:3310":             {"tcp", "[::1]:3310"},
	}
	for in, want := range good {
		if got, err := ParseAddress(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "unix:relative", "tcp:3310", "tcp:host:0", "tcp:host:99999", "inet:1.2.3.4:5", "tcp::3310"} {
		if _, err := ParseAddress(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	list, err := ParseAddresses("unix:/a, tcp:10.0.0.2:3310  tcp:10.0.0.3:3310")
	if err != nil || len(list) != 3 {
		t.Fatalf("%v %v", list, err)
	}
	if _, err := ParseAddresses(" , "); err == nil {
		t.Error("an empty list accepted")
	}
}

func TestParseReply(t *testing.T) {
	cases := []struct {
		in, virus string
		err       error
		anyErr    bool
	}{
		{"stream: OK", "", nil, false},
		{"stream: OK\n", "", nil, false},
		{"1: stream: OK", "", nil, false},
		{"stream: Eicar-Test-Signature FOUND", "Eicar-Test-Signature", nil, false},
		{"stream: Win.Worm\x01Evil FOUND", "Win.Worm?Evil", nil, false},
		{"INSTREAM size limit exceeded. ERROR", "", ErrSizeLimit, true},
		{"stream: FOUND", "", nil, true},
		{"", "", nil, true},
		{"Can't allocate memory ERROR", "", nil, true},
	}
	for _, c := range cases {
		v, err := ParseReply(c.in)
		if v != c.virus || (err != nil) != c.anyErr || (c.err != nil && !errors.Is(err, c.err)) {
			t.Errorf("%q: got %q %v", c.in, v, err)
		}
	}
}

// fakeClamd answers each connection with handle, on a unix socket.
func fakeClamd(t testing.TB, handle func(net.Conn)) Address {
	return fakeClamdOn(t, "unix", handle)
}

// fakeClamdOn answers each connection with handle, on a unix socket or
// loopback TCP.
func fakeClamdOn(t testing.TB, network string, handle func(net.Conn)) Address {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake.sock")
	if network == "tcp" {
		path = "127.0.0.1:0"
	}
	l, err := net.Listen(network, path)
	if err != nil {
		t.Fatal(err)
	}
	if network == "tcp" {
		path = l.Addr().String()
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
	return Address{network, path}
}

var readCommand = clamdtest.ReadCommand

// readStream reads an INSTREAM command (after an IDSESSION, when the
// connection is new) and its chunks, up to limit bytes.
func readStream(c net.Conn, limit int) (string, error) {
	cmd, err := readCommand(c)
	if cmd == "zIDSESSION" {
		cmd, err = readCommand(c)
	}
	if err != nil || cmd != "zINSTREAM" {
		return "", errors.New("no INSTREAM")
	}
	var data []byte
	err = clamdtest.ReadChunks(c, limit, func(b []byte) { data = append(data, b...) })
	if errors.Is(err, clamdtest.ErrTooLong) {
		return "", ErrSizeLimit
	}
	return string(data), err
}

// readStreamOK reads a stream and answers it clean.
func readStreamOK(c net.Conn) bool {
	if _, err := readStream(c, 1<<20); err != nil {
		return false
	}
	c.Write([]byte("1: stream: OK\x00"))
	return true
}

func TestStreamFramesAndVerdict(t *testing.T) {
	got := make(chan string, 1)
	var conns atomic.Int32
	addr := fakeClamd(t, func(c net.Conn) {
		conns.Add(1)
		for id := 1; ; id++ {
			data, err := readStream(c, 1<<20)
			if err != nil {
				return
			}
			got <- data
			if strings.Contains(data, "EVIL") {
				fmt.Fprintf(c, "%d: stream: Test.Evil FOUND\x00", id)
			} else {
				fmt.Fprintf(c, "%d: stream: OK\x00", id)
			}
		}
	})
	p := NewPool([]Address{addr}, PoolOptions{})
	for _, body := range []string{"clean text", "some EVIL here"} {
		st, err := p.Open(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		st.Write(context.Background(), []byte(body[:4]))
		st.Write(context.Background(), []byte(body[4:]))
		res, err := st.Result(context.Background())
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
		if d := <-got; d != body {
			t.Errorf("clamd got %q, want %q", d, body)
		}
		if want := map[bool]string{true: "Test.Evil", false: ""}[strings.Contains(body, "EVIL")]; res.Virus != want {
			t.Errorf("%q: virus %q", body, res.Virus)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for two messages: the session was not reused", n)
	}
}

// clamd closing a stream past its StreamMaxLength with a reply of its own:
// the write fails, and the reply says why.
func TestSizeLimitReplyReadAfterEarlyClose(t *testing.T) {
	addr := fakeClamd(t, func(c net.Conn) {
		if _, err := readStream(c, 1000); errors.Is(err, ErrSizeLimit) {
			c.Write([]byte("INSTREAM size limit exceeded. ERROR\x00"))
		}
	})
	p := NewPool([]Address{addr}, PoolOptions{})
	st, err := p.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	chunk := make([]byte, 64<<10)
	for i := 0; i < 200 && err == nil; i++ {
		err = st.Write(context.Background(), chunk)
	}
	if err == nil {
		_, err = st.Result(context.Background())
	}
	if !errors.Is(err, ErrSizeLimit) {
		t.Fatalf("got %v, want the size limit", err)
	}
}

// A scan that never ends is given up when the context ends (the MTA hung
// up), at once.
func TestResultEndsWithContext(t *testing.T) {
	addr := fakeClamd(t, func(c net.Conn) { readStream(c, 1<<20); time.Sleep(time.Minute) })
	p := NewPool([]Address{addr}, PoolOptions{})
	st, err := p.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	done := make(chan error, 1)
	go func() { _, err := st.Result(ctx); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Result did not end with its context")
	}
}

// Each clamd gets at most MaxConns connections; the next waits and gives
// up with its context.
func TestConnectionsBounded(t *testing.T) {
	addr := fakeClamd(t, func(c net.Conn) { readStream(c, 1<<20) })
	p := NewPool([]Address{addr}, PoolOptions{MaxConns: 1})
	st, err := p.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.Open(ctx); !errors.Is(err, ErrBusy) {
		t.Fatalf("second stream: %v, want busy", err)
	}
	st.Close()
	st, err = p.Open(context.Background())
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	st.Close()
}

// A clamd that refuses connections is left out; streams go to the other
// until it is due again, and to it when none other is up.
func TestDownServerLeftOut(t *testing.T) {
	dead := Address{"unix", filepath.Join(t.TempDir(), "nobody.sock")}
	served := 0
	live := fakeClamd(t, func(c net.Conn) {
		for readStreamOK(c) {
		}
	})
	now := time.Unix(1000, 0)
	p := NewPool([]Address{dead, live}, PoolOptions{Now: func() time.Time { return now }, RetryAfter: 10 * time.Second})
	for i := 0; i < 6; i++ {
		st, err := p.Open(context.Background())
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		if st.Server() != live {
			t.Fatalf("stream %d went to %s", i, st.Server())
		}
		served++
		st.Close()
	}
	if d := p.servers[0].downUntil; !d.Equal(now.Add(10 * time.Second)) {
		t.Fatalf("dead server not left out: %v", d)
	}
	// Only the dead one: it is tried, fails, and the error says so.
	p2 := NewPool([]Address{dead}, PoolOptions{Now: func() time.Time { return now }})
	p2.markDown(p2.servers[0], errors.New("test"))
	if _, err := p2.Open(context.Background()); err == nil || !strings.Contains(err.Error(), "nobody.sock") {
		t.Fatalf("got %v", err)
	}
}

func TestPing(t *testing.T) {
	live := fakeClamd(t, func(c net.Conn) {
		readCommand(c)
		c.Write([]byte("PONG\x00"))
	})
	dead := Address{"unix", filepath.Join(t.TempDir(), "nobody.sock")}
	errs := NewPool([]Address{live, dead}, PoolOptions{}).Ping(context.Background())
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "nobody.sock") {
		t.Fatalf("got %v", errs)
	}
}

func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"stream: OK", "stream: X FOUND", "1: stream: OK", "INSTREAM size limit exceeded. ERROR", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseReply(s)
		if err == nil && v != "" && strings.ContainsAny(v, "\r\n\x00") {
			t.Fatalf("name %q unsafe for a reply", v)
		}
	})
}

// A clamd that stops reading fails the write within the deadline and is
// left out.
func TestStalledClamdLeftOut(t *testing.T) {
	addr := fakeClamd(t, func(c net.Conn) { time.Sleep(5 * time.Second) })
	p := NewPool([]Address{addr}, PoolOptions{})
	st, err := p.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	for i := 0; i < 1000 && err == nil; i++ {
		err = st.Write(ctx, make([]byte, 1<<20))
	}
	if err == nil || !strings.Contains(err.Error(), "not reading the stream") || len(p.Down()) != 1 {
		t.Fatalf("write to a stalled clamd: %v, down %v", err, p.Down())
	}
}

// With every server left out, the one left out longest is tried first.
func TestOrderTriesLongestDownFirst(t *testing.T) {
	now := time.Unix(1000, 0)
	a, b, c := Address{"unix", "/a"}, Address{"unix", "/b"}, Address{"unix", "/c"}
	p := NewPool([]Address{a, b, c}, PoolOptions{Now: func() time.Time { return now }})
	p.servers[0].downUntil = now.Add(3 * time.Second)
	p.servers[1].downUntil = now.Add(1 * time.Second)
	p.servers[2].downUntil = now.Add(2 * time.Second)
	for i := 0; i < 3; i++ {
		o := p.candidates(make([]bool, 3))
		if o[0].addr != b || o[1].addr != c || o[2].addr != a {
			t.Fatalf("order %v %v %v", o[0].addr, o[1].addr, o[2].addr)
		}
	}
}

// A session is reused only when its message's verdict was read, and not
// once clamd closed it (its idle timeout, a restart). Over TCP a write to
// a connection the peer closed succeeds: only looking first tells.
func TestSessionReuse(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) { testSessionReuse(t, network) })
	}
}

func testSessionReuse(t *testing.T, network string) {
	var conns atomic.Int32
	closed := make(chan struct{}, 1)
	// The stand-in closes the session after a stream that says "bye"
	// (decided by what it read, not by a flag its other connections'
	// goroutines could read late).
	addr := fakeClamdOn(t, network, func(c net.Conn) {
		conns.Add(1)
		for {
			data, err := readStream(c, 1<<20)
			if err != nil {
				return
			}
			c.Write([]byte("1: stream: OK\x00"))
			if data == "bye" {
				c.Close()
				closed <- struct{}{}
				return
			}
		}
	})
	now := time.Unix(1000, 0)
	p := NewPool([]Address{addr}, PoolOptions{Now: func() time.Time { return now }})
	scanData := func(finish bool, data string) {
		st, err := p.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.Write(ctx, []byte(data))
		if finish {
			if _, err := st.Result(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	scan := func(finish bool) { scanData(finish, "data") }
	scan(true)
	scan(true)
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for two finished messages", n)
	}
	scan(false) // abandoned midway: its connection is not reused
	scan(true)
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections: an abandoned stream's connection was reused", n)
	}
	scanData(true, "bye") // clamd closes the session after this one
	<-closed
	// Its end of file reaches our side of the loopback a moment later.
	p.mu.Lock()
	sess := p.servers[0].idle[0]
	p.mu.Unlock()
	for deadline := time.Now().Add(5 * time.Second); alive(sess.conn) && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	scan(true)
	if n := conns.Load(); n != 3 {
		t.Fatalf("%d connections: a session clamd closed was reused", n)
	}
	scan(true)
	now = now.Add(maxIdle) // idle as long as clamd's timeout allows, nearly
	scan(true)
	if n := conns.Load(); n != 4 {
		t.Fatalf("%d connections: a session idle for %s was reused", n, maxIdle)
	}
}
