package milterdoor

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pollConn is an accepted milter connection served with raw system calls
// and waited for through its worker's connPoller, outside the runtime's
// own registration of descriptors.
//
// The runtime's poller watches every descriptor for writing too, and a
// Unix socket signals "writable" each time the peer reads what we wrote:
// behind Postfix that woke the daemon for nothing after nearly every
// reply, about one wake-up in five. The runtime also closes descriptors
// with the ordinary system call, which wakes its monitor thread (sysmon)
// from deep sleep, and that then polls every 20 µs while any goroutine
// runs: a few thread switches per connection. A pollConn is watched for
// input only and closed with a raw call.
//
// Only the goroutine serving the connection reads, writes and finally
// closes the descriptor (finish); a stage's watch does so while the
// serving goroutine waits for it. Other goroutines (the drain, Shutdown)
// Close it, which shuts the socket down: the MTA sees the end at once,
// the serving goroutine's wait ends, and the descriptor stays valid until
// its owner finishes with it, so a number reused by the next accept can
// never be read by mistake.
type pollConn struct {
	fd      int // -1 once finished
	network string
	p       *connPoller // the serving worker's; set by attach
	mu      sync.Mutex  // guards fd against finish for Close and Control
	closed  atomic.Bool
	// writeDeadline is the write deadline in Unix nanoseconds, 0 for none.
	writeDeadline atomic.Int64

	// the read in progress, for readFn (no closure per read)
	buf    []byte
	n      int
	errno  syscall.Errno
	readFn func(uintptr) bool
}

func newPollConn(fd int, network string) *pollConn {
	c := &pollConn{fd: fd, network: network}
	c.readFn = c.read
	return c
}

// connPoller is an epoll instance of one worker goroutine, itself in the
// runtime's poller, that watches the socket the worker serves for input
// and hang-ups only. A worker serves its connections one after another,
// so one instance serves them all: adding a connection costs one system
// call, and closing the socket removes it.
type connPoller struct {
	file *os.File // the epoll descriptor, as the runtime polls it
	rc   syscall.RawConn
	fd   int
}

func newConnPoller() (*connPoller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	// Non-blocking, so os.NewFile hands it to the runtime's poller.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(fd), "milter-poller")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &connPoller{file: f, rc: rc, fd: fd}, nil
}

func (p *connPoller) close() { p.file.Close() }

// workerPoller is a worker's connPoller, made when its first raw
// connection comes.
type workerPoller struct{ p *connPoller }

// attach readies c for serving on this worker: a pollConn is added to
// the worker's poller. If that fails (out of descriptors or of the
// kernel's epoll watches), c is closed.
func (w *workerPoller) attach(c net.Conn) error {
	pc, ok := c.(*pollConn)
	if !ok {
		return nil
	}
	if w.p == nil {
		p, err := newConnPoller()
		if err != nil {
			pc.finish()
			return err
		}
		w.p = p
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(pc.fd)}
	if err := unix.EpollCtl(w.p.fd, unix.EPOLL_CTL_ADD, pc.fd, &ev); err != nil {
		pc.finish()
		return os.NewSyscallError("epoll_ctl", err)
	}
	pc.p = w.p
	return nil
}

func (w *workerPoller) close() {
	if w.p != nil {
		w.p.close()
	}
}

func (c *pollConn) read(uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(c.fd), uintptr(unsafe.Pointer(&c.buf[0])), uintptr(len(c.buf)))
		switch e {
		case 0:
			c.n = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait for the poller, honouring the read deadline
		}
		c.errno = e
		return true
	}
}

// Read reads what the socket has, up to len(b) bytes (len(b) > 0),
// waiting for input until the read deadline.
func (c *pollConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.buf, c.n, c.errno = b, 0, 0
	err := c.p.rc.Read(c.readFn)
	c.buf = nil
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case c.errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", c.errno))
	case c.n == 0:
		if c.closed.Load() {
			return 0, c.opError("read", net.ErrClosed)
		}
		return 0, io.EOF
	}
	return c.n, nil
}

// Write writes all of b, waiting for room until the write deadline.
func (c *pollConn) Write(b []byte) (int, error) { return c.write(b, true) }

// write writes b. With wait false it does not wait for a full socket
// buffer: it returns errWouldBlock, and b[written:] is what is left.
func (c *pollConn) write(b []byte, wait bool) (int, error) {
	written := 0
	full, errno := c.writeSome(b, &written)
	switch {
	case errno != 0:
		return written, c.writeError(errno)
	case !full:
		return written, nil
	case !wait:
		return written, errWouldBlock
	}
	n, err := c.writeWaiting(b[written:])
	return written + n, err
}

// writeSome writes b from *written on, moving it on, until all is
// written, the socket's buffer is full (full), or another error.
func (c *pollConn) writeSome(b []byte, written *int) (full bool, errno syscall.Errno) {
	for *written < len(b) {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(c.fd), uintptr(unsafe.Pointer(&b[*written])), uintptr(len(b)-*written))
		switch e {
		case 0:
			*written += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return true, 0
		default:
			return false, e
		}
	}
	return false, 0
}

// writeError is a failed write's error: a closed connection's, as
// net.Conn gives it, when another goroutine closed it.
func (c *pollConn) writeError(errno syscall.Errno) error {
	if c.closed.Load() {
		return c.opError("write", net.ErrClosed)
	}
	return c.opError("write", os.NewSyscallError("write", errno))
}

// writeWaiting writes b to a socket whose buffer is full, waiting for
// room until the write deadline or the connection's Close. A reply the
// MTA does not read is rare (it waits for our answer), so only then is
// the socket handed to the runtime's poller for writing, through a
// duplicate closed after the write: the goroutine parks there, holding
// no thread, however many peers stop reading at once.
func (c *pollConn) writeWaiting(b []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.opError("write", net.ErrClosed)
	}
	dup, err := unix.FcntlInt(uintptr(c.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return 0, c.opError("write", os.NewSyscallError("fcntl", err))
	}
	f := os.NewFile(uintptr(dup), "milter-write") // non-blocking, as the socket: polled
	defer f.Close()
	if d := c.writeDeadline.Load(); d != 0 {
		f.SetWriteDeadline(time.Unix(0, d))
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, c.opError("write", err)
	}
	written := 0
	var errno syscall.Errno
	// The poller calls this first (the buffer may have room by now) and
	// again at each sign of room.
	err = rc.Write(func(uintptr) bool {
		var full bool
		full, errno = c.writeSome(b, &written)
		return !full
	})
	switch {
	case errno != 0:
		return written, c.writeError(errno)
	case err != nil && c.closed.Load():
		return written, c.opError("write", net.ErrClosed)
	case err != nil:
		return written, c.opError("write", err)
	}
	return written, nil
}

// Close shuts the socket down, which ends the MTA's side and any wait on
// it; the serving goroutine closes the descriptor (finish).
func (c *pollConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Swap(true) {
		return c.opError("close", net.ErrClosed)
	}
	if c.fd >= 0 {
		syscall.RawSyscall(syscall.SYS_SHUTDOWN, uintptr(c.fd), syscall.SHUT_RDWR, 0)
	}
	return nil
}

// finish closes the descriptor; the connection's owner calls it once no
// read or write of its own can follow.
func (c *pollConn) finish() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed.Store(true)
	if c.fd >= 0 {
		syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(c.fd), 0, 0)
		c.fd = -1
	}
}

func (c *pollConn) opError(op string, err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err // net.Conn's errors do not name the file
	}
	if errors.Is(err, os.ErrClosed) {
		err = net.ErrClosed
	}
	return &net.OpError{Op: op, Net: c.network, Err: err}
}

func (c *pollConn) LocalAddr() net.Addr  { return fileAddr(c.network) }
func (c *pollConn) RemoteAddr() net.Addr { return fileAddr(c.network) }

func (c *pollConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the deadline of the reads, a wait under way
// included.
func (c *pollConn) SetReadDeadline(t time.Time) error {
	if c.p == nil {
		return nil // not served yet: nothing reads
	}
	if err := c.p.file.SetReadDeadline(t); err != nil {
		return c.opError("set", err)
	}
	return nil
}

// SetWriteDeadline sets the deadline of the writes that follow.
func (c *pollConn) SetWriteDeadline(t time.Time) error {
	var d int64
	if !t.IsZero() {
		d = t.UnixNano()
	}
	c.writeDeadline.Store(d)
	return nil
}

// SyscallConn gives peerHungUp the socket: only Control works.
func (c *pollConn) SyscallConn() (syscall.RawConn, error) { return pollRawConn{c}, nil }

type pollRawConn struct{ c *pollConn }

func (r pollRawConn) Control(f func(uintptr)) error {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	if r.c.fd < 0 {
		return r.c.opError("raw-control", net.ErrClosed)
	}
	f(uintptr(r.c.fd))
	return nil
}

func (r pollRawConn) Read(func(uintptr) bool) error {
	return r.c.opError("raw-read", errors.ErrUnsupported)
}

func (r pollRawConn) Write(func(uintptr) bool) error {
	return r.c.opError("raw-write", errors.ErrUnsupported)
}

// fileAddr names the network of a connection whose addresses the door
// does not use (the MTA sends the client's in the connect packet).
type fileAddr string

func (a fileAddr) Network() string { return string(a) }
func (a fileAddr) String() string  { return "" }

// finishConn closes c for good: its owner's last act.
func finishConn(c net.Conn) {
	if pc, ok := c.(*pollConn); ok {
		pc.finish()
		return
	}
	c.Close()
}
