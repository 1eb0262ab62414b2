package milterdoor

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// rawReadWriter is a connection's reads and writes as raw system calls.
type rawReadWriter interface {
	Read(b []byte) (int, error)
	// write writes b; with wait false it returns errWouldBlock rather
	// than wait for room, with b[written:] left to write.
	write(b []byte, wait bool) (written int, err error)
}

// rawIO reads and writes a socket with raw system calls, under the
// runtime's poller (syscall.RawConn), instead of net.Conn's Read and
// Write.
//
// The socket is non-blocking, so a read or write returns at once (or
// with EAGAIN, and the poller waits). net.Conn's calls still do the
// runtime's bookkeeping for a system call that may block, and the first
// one after the process was idle wakes the runtime's monitor thread
// (sysmon) from its deep sleep, which then polls for a while before it
// sleeps again. A milter is idle between nearly every packet burst the
// MTA sends, so behind a real Postfix that cost more than the packets:
// futex wakes and nanosleeps of the monitor, each a thread switch. Raw
// calls leave it asleep.
type rawIO struct {
	rc           syscall.RawConn
	network      string // for errors, as net.Conn names it
	readFn       func(fd uintptr) bool
	writeFn      func(fd uintptr) bool
	buf          []byte // the read's target or the write's rest
	n            int
	errno        syscall.Errno
	wouldBlock   bool
	mayWaitWrite bool
}

// newRawIO returns the raw calls for c, or nil where c is no socket (a
// pipe in tests) or in a build with the race detector: net.Conn's Read
// and Write tell the detector that what one side wrote before a write is
// seen by the reader of it, and a test reading our reply then checking
// what a filter recorded relies on that; raw calls do not say it.
func newRawIO(c net.Conn) rawReadWriter {
	if raceBuild {
		return nil
	}
	if rw, ok := c.(rawReadWriter); ok {
		return rw // a pollConn: raw already
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawIO{rc: rc, network: c.LocalAddr().Network()}
	r.readFn = r.read
	r.writeFn = r.writeSome
	return r
}

func (r *rawIO) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&r.buf[0])), uintptr(len(r.buf)))
		switch e {
		case 0:
			r.n = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // the poller waits for the socket, honouring the deadline
		}
		r.errno = e
		return true
	}
}

// Read reads into b (len(b) > 0) as net.Conn's Read does.
func (r *rawIO) Read(b []byte) (int, error) {
	r.buf, r.n, r.errno = b, 0, 0
	err := r.rc.Read(r.readFn)
	r.buf = nil
	switch {
	case err != nil:
		return 0, err
	case r.errno != 0:
		return 0, &net.OpError{Op: "read", Net: r.network, Err: os.NewSyscallError("read", r.errno)}
	case r.n == 0:
		return 0, io.EOF
	}
	return r.n, nil
}

func (r *rawIO) writeSome(fd uintptr) bool {
	for len(r.buf) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&r.buf[0])), uintptr(len(r.buf)))
		switch e {
		case 0:
			r.buf = r.buf[n:]
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if r.mayWaitWrite {
				return false
			}
			r.wouldBlock = true
			return true
		}
		r.errno = e
		return true
	}
	return true
}

// errWouldBlock is tryWrite's answer when the socket's buffer is full.
var errWouldBlock = errors.New("write would block")

// write writes all of b. With wait false it does not wait for a full
// socket buffer: it returns errWouldBlock and the bytes not written are
// left in b[written:].
func (r *rawIO) write(b []byte, wait bool) (int, error) {
	r.buf, r.errno, r.wouldBlock, r.mayWaitWrite = b, 0, false, wait
	err := r.rc.Write(r.writeFn)
	written := len(b) - len(r.buf)
	r.buf = nil
	switch {
	case err != nil:
		return written, err
	case r.errno != 0:
		return written, &net.OpError{Op: "write", Net: r.network, Err: os.NewSyscallError("write", r.errno)}
	case r.wouldBlock:
		return written, errWouldBlock
	}
	return written, nil
}
