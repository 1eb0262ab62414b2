package milterdoor

import (
	"net"
	"os"
	"syscall"
)

// rawAccepter accepts a listener's connections with a raw accept4 under
// the runtime's poller, as rawIO reads, instead of net's Accept.
//
// net's Accept makes the call with the runtime's bookkeeping for a call
// that may block, and a milter is idle between nearly every connection
// the MTA opens (one per SMTP session), so nearly every accept woke the
// runtime's monitor thread (sysmon) from its deep sleep, which then
// polled with nanosleep: behind a real Postfix, a thread switch or two
// per message for nothing. The accepted socket is served as a pollConn.
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
	return newPollConn(a.nfd, a.network), nil
}

// release closes the duplicate accepted on.
func (a *rawAccepter) release() { a.file.Close() }

// Close closes the listener and the duplicate accepted on.
func (a *rawAccepter) Close() error {
	err := a.ln.Close()
	a.file.Close()
	return err
}
