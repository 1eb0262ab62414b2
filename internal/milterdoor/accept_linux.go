package milterdoor

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// rawAccepter accepts a listener's connections with a raw accept4 under
// the runtime's poller, as rawIO reads, instead of net's Accept.
//
// net's Accept makes the call with the runtime's bookkeeping for a call
// that may block, and a milter is idle between nearly every connection
// the MTA opens (one per SMTP session), so nearly every accept woke the
// runtime's monitor thread (sysmon) from its deep sleep, which then
// polled with nanosleep: behind a real Postfix, a thread switch or two
// per message for nothing. The accepted socket is registered with the
// poller through os.NewFile, whose calls are raw too. (Closing it still
// wakes the monitor: the poller closes descriptors with the ordinary
// call.)
//
// A listener's own syscall.RawConn cannot wait for a connection, so the
// accepter waits on a duplicate of the listening descriptor (File), which
// it closes with the listener (Close) or as soon as it finds the listener
// closed under it.
type rawAccepter struct {
	ln      net.Listener
	lnRaw   syscall.RawConn // the listener's, to see whether it is closed
	file    *os.File        // the duplicate accepted on
	rc      syscall.RawConn // file's
	network string
	nfd     int
	errno   syscall.Errno
	acceptF func(fd uintptr) bool
}

// newAccepter returns the raw accept of ln, or ln itself where ln is no
// socket listener of its own (a test's wrapper) or the build has the race
// detector (see newRawIO).
func newAccepter(ln net.Listener) accepter {
	if raceBuild {
		return ln
	}
	sl, ok := ln.(interface {
		syscall.Conn
		File() (*os.File, error)
	})
	if !ok {
		return ln
	}
	lnRaw, err := sl.SyscallConn()
	if err != nil {
		return ln
	}
	f, err := sl.File()
	if err != nil {
		return ln
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return ln
	}
	a := &rawAccepter{ln: ln, lnRaw: lnRaw, file: f, rc: rc, network: ln.Addr().Network()}
	a.acceptF = a.accept
	return a
}

func (a *rawAccepter) accept(fd uintptr) bool {
	for {
		nfd, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, fd, 0, 0, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			a.nfd = int(nfd)
			return true
		case syscall.EINTR, syscall.ECONNABORTED:
			// ECONNABORTED: the client left before we took it; net's
			// Accept takes the next one too.
			continue
		case syscall.EAGAIN:
			return false // the poller waits for the next connection
		}
		a.errno = e
		return true
	}
}

// Accept waits for the next connection, as net.Listener's Accept.
func (a *rawAccepter) Accept() (net.Conn, error) {
	a.nfd, a.errno = -1, 0
	err := a.rc.Read(a.acceptF)
	if err == nil && a.lnRaw.Control(func(uintptr) {}) != nil {
		// The listener was closed by its owner while we waited on the
		// duplicate: refuse what came since, as a closed listener does.
		if a.nfd >= 0 {
			syscall.Close(a.nfd)
		}
		a.file.Close()
		err = net.ErrClosed
	}
	if err != nil {
		// The duplicate was closed (Close): nothing else ends a wait
		// without a deadline.
		return nil, &net.OpError{Op: "accept", Net: a.network, Err: net.ErrClosed}
	}
	if a.errno != 0 {
		return nil, &net.OpError{Op: "accept", Net: a.network, Err: os.NewSyscallError("accept4", a.errno)}
	}
	f := os.NewFile(uintptr(a.nfd), "milter")
	if f == nil {
		syscall.Close(a.nfd)
		return nil, &net.OpError{Op: "accept", Net: a.network, Err: syscall.EBADF}
	}
	return &fileConn{f: f, network: a.network}, nil
}

// release closes the duplicate accepted on.
func (a *rawAccepter) release() { a.file.Close() }

// Close closes the listener and the duplicate accepted on.
func (a *rawAccepter) Close() error {
	err := a.ln.Close()
	a.file.Close()
	return err
}

// fileConn is an accepted socket as the door uses it: reads and writes
// (mostly through rawIO), deadlines and Close, with errors as net.Conn
// gives them, so the door tells a closed connection (net.ErrClosed) and
// a deadline (a timeout) from a broken one as before.
type fileConn struct {
	f       *os.File
	network string
	closed  atomic.Bool
}

func (c *fileConn) netError(op string, err error) error {
	if err == nil {
		return nil
	}
	if c.closed.Load() {
		err = net.ErrClosed
	} else if pe := (*os.PathError)(nil); errors.As(err, &pe) {
		err = pe.Err // net.Conn's errors do not name the file
	}
	return &net.OpError{Op: op, Net: c.network, Err: err}
}

func (c *fileConn) Read(b []byte) (int, error) {
	n, err := c.f.Read(b)
	if err != nil && err == io.EOF {
		return n, err
	}
	return n, c.netError("read", err)
}

func (c *fileConn) Write(b []byte) (int, error) {
	n, err := c.f.Write(b)
	return n, c.netError("write", err)
}

func (c *fileConn) Close() error {
	if c.closed.Swap(true) {
		return c.netError("close", net.ErrClosed)
	}
	return c.netError("close", c.f.Close())
}

func (c *fileConn) LocalAddr() net.Addr           { return fileAddr(c.network) }
func (c *fileConn) RemoteAddr() net.Addr          { return fileAddr(c.network) }
func (c *fileConn) SetDeadline(t time.Time) error { return c.netError("set", c.f.SetDeadline(t)) }
func (c *fileConn) SetReadDeadline(t time.Time) error {
	return c.netError("set", c.f.SetReadDeadline(t))
}
func (c *fileConn) SetWriteDeadline(t time.Time) error {
	return c.netError("set", c.f.SetWriteDeadline(t))
}

// SyscallConn gives rawIO the socket, with the errors of a closed
// connection as net.Conn's.
func (c *fileConn) SyscallConn() (syscall.RawConn, error) {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	return fileRawConn{rc: rc, c: c}, nil
}

type fileRawConn struct {
	rc syscall.RawConn
	c  *fileConn
}

func (r fileRawConn) Control(f func(uintptr)) error {
	return r.c.netError("raw-control", r.rc.Control(f))
}
func (r fileRawConn) Read(f func(uintptr) bool) error {
	return r.c.netError("raw-read", r.rc.Read(f))
}
func (r fileRawConn) Write(f func(uintptr) bool) error {
	return r.c.netError("raw-write", r.rc.Write(f))
}

// fileAddr names the network of a connection whose addresses the door
// does not use (the MTA sends the client's in the connect packet).
type fileAddr string

func (a fileAddr) Network() string { return string(a) }
func (a fileAddr) String() string  { return "" }
