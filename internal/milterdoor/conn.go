package milterdoor

import (
	"bufio"
	"net"
)

// The milter library reads each packet with two small reads straight from
// the socket (a 4-byte length, then the rest), which for a 64 KiB body chunk
// means several system calls. bufferedListener hands it connections whose
// reads come from one large buffer, so a chunk usually costs one read.

const readBufferSize = 256 << 10

type bufferedListener struct{ net.Listener }

func (l *bufferedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &bufferedConn{Conn: c, r: bufio.NewReaderSize(c, readBufferSize)}, nil
}

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
