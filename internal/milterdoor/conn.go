package milterdoor

import (
	"bufio"
	"encoding/binary"
	"net"
	"sync"
)

// The milter library reads each packet with two small reads straight from
// the socket (a 4-byte length, then the rest) and writes each reply as two
// writes (a 5-byte header, then the data). With Postfix opening one milter
// connection per SMTP session, those system calls are most of a message's
// cost. bufferedConn serves the reads from one pooled buffer and joins each
// reply's two writes into one.

const readBufferSize = 128 << 10

var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufferSize) }}

type bufferedListener struct{ net.Listener }

func (l *bufferedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	r := readers.Get().(*bufio.Reader)
	r.Reset(c)
	return &bufferedConn{Conn: c, r: r}, nil
}

type bufferedConn struct {
	net.Conn
	mu     sync.Mutex // guards r against Close from another goroutine (server shutdown)
	r      *bufio.Reader
	header []byte // a reply header held back until its data arrives
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.r == nil {
		return 0, net.ErrClosed
	}
	return c.r.Read(p)
}

// Write holds back a 5-byte packet header (length, code) whose packet has
// data, and sends it with the data in one system call.
func (c *bufferedConn) Write(p []byte) (int, error) {
	if c.header == nil && len(p) == 5 && binary.BigEndian.Uint32(p) > 1 {
		c.header = append(make([]byte, 0, 5), p...)
		return len(p), nil
	}
	if c.header != nil {
		buf := net.Buffers{c.header, p}
		c.header = nil
		n, err := buf.WriteTo(c.Conn)
		return max(0, int(n)-5), err
	}
	return c.Conn.Write(p)
}

// Close closes the socket (which ends a blocked Read), then returns the
// read buffer to the pool.
func (c *bufferedConn) Close() error {
	err := c.Conn.Close()
	c.mu.Lock()
	if c.r != nil {
		c.r.Reset(nil)
		readers.Put(c.r)
		c.r = nil
	}
	c.mu.Unlock()
	return err
}
