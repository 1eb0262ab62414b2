package milterdoor

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerHungUp reports, without reading or waiting, whether the peer of c
// has closed its side: POLLRDHUP is set once the peer's FIN (or a reset)
// has arrived, even with unread bytes still queued before it, which a
// read would have to consume first.
func peerHungUp(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	hup := false
	rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
			hup = fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	return hup
}
