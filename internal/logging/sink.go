package logging

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// Timings of a sink. A log host that stalls holds only the sink's
// goroutine, never a session: lines wait in the queue meanwhile.
const (
	dialTimeout  = 5 * time.Second
	writeTimeout = 10 * time.Second
	flushTimeout = 2 * time.Second // at Close, for what is still queued
	minBackoff   = 100 * time.Millisecond
	maxBackoff   = 30 * time.Second
	// dropNoticeEvery bounds the notices about lines dropped while
	// connected (a log host slower than the mail).
	dropNoticeEvery = time.Minute
	// localQueue lines wait for the local syslog daemon.
	localQueue = 10000
)

// entry is one formatted log line waiting to be framed and sent.
type entry struct {
	time     time.Time
	severity int
	text     string
}

// sink sends queued lines to a syslog receiver over one connection,
// redialling when it breaks. send never blocks: a full queue drops the line
// and counts it; the count is told in a line of its own when the receiver
// is back.
type sink struct {
	what    string // "log host HOST:PORT", for notices
	dial    func(ctx context.Context) (net.Conn, error)
	frame   func(dst []byte, e entry) []byte
	stream  bool                 // a stream socket: a peer that closed is noticed before a line is lost in it
	notice  func(string, ...any) // tells about the sink somewhere else
	queue   chan entry
	dropped atomic.Uint64
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
}

func newSink(what string, queue int, dial func(context.Context) (net.Conn, error), frame func([]byte, entry) []byte, stream bool, notice func(string, ...any)) *sink {
	ctx, cancel := context.WithCancel(context.Background())
	return &sink{what: what, dial: dial, frame: frame, stream: stream, notice: notice,
		queue: make(chan entry, max(queue, 1)), ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

// newLocalSink connects to the local syslog daemon's socket now, so that
// serve refuses to start without it, then sends RFC 3164 lines as the
// C library's syslog(3) does.
func newLocalSink(path string, facility int, tag string, notice func(string, ...any)) (*sink, error) {
	path = cmp.Or(path, "/dev/log")
	conn, err := dialLocal(path)
	if err != nil {
		return nil, fmt.Errorf("cannot reach syslog: %v (set log.target = \"stderr\" where no syslog daemon runs)", err)
	}
	pid := strconv.Itoa(os.Getpid())
	frame := func(dst []byte, e entry) []byte {
		dst = fmt.Appendf(dst, "<%d>%s %s[%s]: %s", facility*8+e.severity, e.time.Format(time.Stamp), tag, pid, e.text)
		return append(dst, '\n')
	}
	stream := conn.RemoteAddr() != nil && conn.RemoteAddr().Network() == "unix"
	s := newSink("syslog socket "+path, localQueue, func(context.Context) (net.Conn, error) { return dialLocal(path) }, frame, stream, notice)
	go s.run(conn)
	return s, nil
}

// dialLocal connects to a syslog socket: a datagram socket (rsyslog,
// journald), or a stream one (syslog-ng may offer either).
func dialLocal(path string) (net.Conn, error) {
	conn, err := net.Dial("unixgram", path)
	if err != nil && errors.Is(err, syscall.EPROTOTYPE) {
		conn, err = net.Dial("unix", path)
	}
	return conn, err
}

// newRemoteSink sends RFC 5424 lines over TCP with octet counting (RFC 6587
// §3.4.1), which rsyslog and syslog-ng take on their TCP inputs. It
// connects in the background: a log host that is away at start is
// reported, never waited for.
func newRemoteSink(addr string, facility int, tag string, queue int, notice func(string, ...any)) *sink {
	host, pid := hostname(), strconv.Itoa(os.Getpid())
	frame := func(dst []byte, e entry) []byte {
		msg := fmt.Sprintf("<%d>1 %s %s %s %s - - %s", facility*8+e.severity,
			e.time.UTC().Format("2006-01-02T15:04:05.000000Z"), host, tag, pid, e.text)
		return fmt.Appendf(dst, "%d %s", len(msg), msg)
	}
	s := newSink("log host "+addr, queue, func(ctx context.Context) (net.Conn, error) { return dialRemote(ctx, addr) }, frame, true, notice)
	go s.run(nil)
	return s
}

func dialRemote(ctx context.Context, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// send queues a line, or drops and counts it when the queue is full.
func (s *sink) send(e entry) {
	select {
	case s.queue <- e:
	default:
		s.dropped.Add(1)
	}
}

// Close sends what is queued, for at most flushTimeout, and stops.
func (s *sink) Close() error {
	s.cancel()
	<-s.done
	return nil
}

// run owns the connection: it takes lines from the queue and writes them,
// and redials (backing off up to maxBackoff) when the receiver goes away.
// The line that failed is sent again on the next connection.
func (s *sink) run(conn net.Conn) {
	defer close(s.done)
	var (
		pending     *entry
		reported    uint64 // drops already told
		lastNotice  time.Time
		down        bool
		backoff     = minBackoff
		buf         []byte
		everDialled = conn != nil
	)
	for {
		if conn == nil {
			c, err := s.dial(s.ctx)
			if err != nil {
				if s.ctx.Err() != nil {
					s.dropQueued(pending)
					return
				}
				if !down {
					down = true
					s.notice(s.what+" unreachable: log lines wait in a queue, then are dropped and counted", "error", err.Error(), "queue", cap(s.queue))
				}
				select {
				case <-time.After(backoff):
				case <-s.ctx.Done():
					s.dropQueued(pending)
					return
				}
				backoff = min(2*backoff, maxBackoff)
				continue
			}
			conn, backoff = c, minBackoff
			if down || (everDialled && s.dropped.Load() != reported) {
				lost := s.dropped.Load() - reported
				reported += lost
				msg := s.what + " reachable again"
				s.notice(msg, "dropped", lost)
				// The log host hears it too, in its place among the lines.
				buf = s.frame(buf[:0], entry{time: time.Now(), severity: 4, text: fmt.Sprintf("msg=%q dropped=%d", msg, lost)})
				conn.SetWriteDeadline(time.Now().Add(writeTimeout))
				if _, err := conn.Write(buf); err != nil {
					conn.Close()
					conn = nil
					continue
				}
				down, lastNotice = false, time.Now()
			}
			everDialled = true
		}
		var e entry
		if pending != nil {
			e, pending = *pending, nil
		} else {
			select {
			case e = <-s.queue:
			case <-s.ctx.Done():
				s.flush(conn)
				return
			}
		}
		if s.stream && peerClosed(conn) {
			conn.Close()
			conn, pending = nil, &e
			continue
		}
		buf = s.frame(buf[:0], e)
		conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := conn.Write(buf); err != nil {
			conn.Close()
			conn, pending = nil, &e
			continue
		}
		if n := s.dropped.Load(); n != reported && time.Since(lastNotice) >= dropNoticeEvery {
			s.notice(s.what+" too slow: log lines dropped", "dropped", n-reported)
			reported, lastNotice = n, time.Now()
		}
	}
}

// flush writes what is queued, within flushTimeout; the rest is dropped.
func (s *sink) flush(conn net.Conn) {
	defer conn.Close()
	conn.SetWriteDeadline(time.Now().Add(flushTimeout))
	var buf []byte
	for {
		select {
		case e := <-s.queue:
			buf = s.frame(buf[:0], e)
			if _, err := conn.Write(buf); err != nil {
				s.dropQueued(&e)
				return
			}
		default:
			return
		}
	}
}

// dropQueued counts what can no longer be sent.
func (s *sink) dropQueued(pending *entry) {
	if pending != nil {
		s.dropped.Add(1)
	}
	s.dropped.Add(uint64(len(s.queue)))
}

// peerClosed tells whether the receiver closed a stream connection. A
// receiver never sends, so anything readable is the end. Without this
// look, the first line after a receiver stops would be written into a
// connection already closed, accepted by the kernel, and lost uncounted.
func peerClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		closed = (err == nil && n == 0) || (err != nil && !errors.Is(err, syscall.EAGAIN))
		return true // never wait for readiness
	})
	return closed
}
