// Package clamd talks to ClamAV's scanning daemon: it streams data to be
// scanned with the INSTREAM command (length-prefixed chunks, a zero-length
// chunk at the end) and reads clamd's verdict. A Pool spreads streams over
// several clamd servers, round-robin, leaves out a server that failed for a
// while, and bounds the connections open to each.
package clamd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Address is where a clamd listens: "unix:/run/clamav/clamd.ctl" or
// "tcp:127.0.0.1:3310".
type Address struct {
	Network string // "unix" or "tcp"
	Addr    string
}

func (a Address) String() string { return a.Network + ":" + a.Addr }

// ParseAddress reads "unix:PATH" or "tcp:HOST:PORT". A bare absolute path
// is a unix socket, as in clamd.conf's LocalSocket.
func ParseAddress(s string) (Address, error) {
	s = strings.TrimSpace(s)
	switch {
	case strings.HasPrefix(s, "unix:"):
		p := strings.TrimPrefix(s, "unix:")
		if !strings.HasPrefix(p, "/") {
			return Address{}, fmt.Errorf("clamd address %q: a unix socket needs an absolute path", s)
		}
		return Address{"unix", p}, nil
	case strings.HasPrefix(s, "/"):
		return Address{"unix", s}, nil
	case strings.HasPrefix(s, "tcp:"):
		hp := strings.TrimPrefix(s, "tcp:")
		host, port, err := net.SplitHostPort(hp)
		if err != nil || host == "" {
			return Address{}, fmt.Errorf("clamd address %q: want tcp:HOST:PORT", s)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return Address{}, fmt.Errorf("clamd address %q: bad port %q", s, port)
		}
		return Address{"tcp", hp}, nil
	}
	return Address{}, fmt.Errorf("clamd address %q: want unix:/PATH or tcp:HOST:PORT", s)
}

// ParseAddresses reads a list of addresses separated by commas or blanks.
func ParseAddresses(s string) ([]Address, error) {
	var out []Address
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		a, err := ParseAddress(f)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, errors.New("no clamd address")
	}
	return out, nil
}

var (
	// ErrSizeLimit is clamd refusing a stream longer than its
	// StreamMaxLength.
	ErrSizeLimit = errors.New("clamd: stream longer than its StreamMaxLength")
	// ErrBusy is every clamd's connections in use until the context ended.
	ErrBusy = errors.New("clamd: every connection to clamd is in use")
)

// Result is clamd's verdict on a stream.
type Result struct {
	// Virus is the name of what clamd found, or "" for a clean stream.
	Virus string
}

// maxReply bounds clamd's reply; a verdict line is far shorter.
const maxReply = 1024

// ParseReply reads clamd's answer to INSTREAM, without its NUL or newline:
// "stream: OK", "stream: NAME FOUND", or an error ("... ERROR").
func ParseReply(reply string) (virus string, err error) {
	r := strings.TrimRight(reply, "\x00\r\n")
	// A reply in a session is prefixed with its request id: "1: stream: OK".
	if i := strings.Index(r, ": stream: "); i >= 0 && i < 12 {
		r = r[i+2:]
	}
	switch {
	case r == "stream: OK":
		return "", nil
	case strings.HasPrefix(r, "stream: ") && strings.HasSuffix(r[len("stream: "):], " FOUND"):
		name := strings.TrimSpace(strings.TrimSuffix(r[len("stream: "):], " FOUND"))
		if name == "" {
			return "", fmt.Errorf("clamd: unexpected reply %q", printable(r))
		}
		return printable(name), nil
	case strings.Contains(r, "size limit exceeded"):
		return "", ErrSizeLimit
	case r == "":
		return "", errors.New("clamd: closed the connection without a reply")
	}
	return "", fmt.Errorf("clamd: %s", printable(r))
}

// printable keeps a name from clamd fit for a log line and an SMTP reply.
func printable(s string) string {
	if len(s) > 200 {
		s = s[:200]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x21 || r > 0x7e {
			if r == ' ' {
				return r
			}
			return '?'
		}
		return r
	}, s)
}

// PoolOptions tune a Pool.
type PoolOptions struct {
	// MaxConns bounds the connections open to each clamd at once
	// (default 20).
	MaxConns int
	// DialTimeout bounds connecting to one clamd (default 2 s).
	DialTimeout time.Duration
	// RetryAfter is how long a clamd that failed is left out while
	// another is up (default 10 s).
	RetryAfter time.Duration
	// Now is the clock (tests).
	Now func() time.Time
}

// Pool is a set of clamd servers. It is safe for concurrent use.
type Pool struct {
	servers []*server
	next    atomic.Uint32
	opts    PoolOptions
	closed  atomic.Bool
}

type server struct {
	addr      Address
	slots     chan struct{} // a token per connection in use
	idle      chan *session // connections between messages, for the next
	downUntil atomic.Int64  // unix nanoseconds; 0: up
}

// session is a connection in clamd's IDSESSION mode: one INSTREAM after
// another on the same connection, each reply prefixed with its number.
// Reusing it saves a connect and clamd's accept for every message.
type session struct {
	conn  net.Conn
	since time.Time // idle since
}

// maxIdle is how long a session waits for its next message before it is
// closed rather than reused: well under clamd's IdleTimeout (30 s by
// default), after which clamd closes it.
const maxIdle = 10 * time.Second

// NewPool returns a pool over the addresses.
func NewPool(addrs []Address, opts PoolOptions) *Pool {
	if opts.MaxConns <= 0 {
		opts.MaxConns = 20
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 2 * time.Second
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = 10 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	p := &Pool{opts: opts}
	for _, a := range addrs {
		p.servers = append(p.servers, &server{addr: a, slots: make(chan struct{}, opts.MaxConns), idle: make(chan *session, opts.MaxConns)})
	}
	return p
}

// Close closes the idle sessions; streams still open close theirs when
// they end, since a closed pool keeps none for the next message. Streams
// may still be opened (each on a connection of its own), so a message in
// flight on a replaced filter is not failed by its close.
func (p *Pool) Close() error {
	p.closed.Store(true)
	for _, s := range p.servers {
		s.closeIdle()
	}
	return nil
}

func (s *server) closeIdle() {
	for {
		select {
		case sess := <-s.idle:
			sess.conn.Close()
		default:
			return
		}
	}
}

// Addresses lists the pool's servers.
func (p *Pool) Addresses() []Address {
	out := make([]Address, len(p.servers))
	for i, s := range p.servers {
		out[i] = s.addr
	}
	return out
}

// order is the servers to try, starting at the next in turn: those up
// first, then those left out (the one left out longest first), so a
// stream goes to a down server only when none is up.
func (p *Pool) order() []*server {
	n := len(p.servers)
	start := int(p.next.Add(1)-1) % n
	now := p.opts.Now().UnixNano()
	up := make([]*server, 0, n)
	var down []*server
	for i := range n {
		s := p.servers[(start+i)%n]
		if d := s.downUntil.Load(); d != 0 && now < d {
			down = append(down, s)
		} else {
			up = append(up, s)
		}
	}
	for i := 1; i < len(down); i++ { // insertion sort: n is tiny
		for j := i; j > 0 && down[j].downUntil.Load() < down[j-1].downUntil.Load(); j-- {
			down[j], down[j-1] = down[j-1], down[j]
		}
	}
	return append(up, down...)
}

func (p *Pool) markDown(s *server) {
	s.downUntil.Store(p.opts.Now().Add(p.opts.RetryAfter).UnixNano())
}

// Open starts a stream on a clamd: the first in turn that is up and
// accepts a connection. It waits for a free connection slot while ctx
// lasts.
func (p *Pool) Open(ctx context.Context) (*Stream, error) {
	var errs []error
	for _, s := range p.order() {
		st, err := p.openOn(ctx, s)
		if err == nil {
			return st, nil
		}
		if ctx.Err() != nil {
			return nil, errors.Join(append(errs, err)...)
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

func (p *Pool) openOn(ctx context.Context, s *server) (*Stream, error) {
	select {
	case s.slots <- struct{}{}:
	default:
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: %w", s.addr, ErrBusy)
		}
	}
	st := &Stream{pool: p, srv: s, sess: p.idleSession(s)}
	if st.sess != nil {
		st.conn = st.sess.conn
		st.conn.SetWriteDeadline(time.Now().Add(p.opts.DialTimeout))
		if _, err := st.conn.Write([]byte("zINSTREAM\x00")); err == nil {
			return st, nil
		}
		// Closed under us: a new connection instead, the server not
		// blamed for it.
		st.conn.Close()
		st = &Stream{pool: p, srv: s}
	}
	d := net.Dialer{Timeout: p.opts.DialTimeout}
	conn, err := d.DialContext(ctx, s.addr.Network, s.addr.Addr)
	if err != nil {
		<-s.slots
		if ctx.Err() == nil {
			p.markDown(s)
		}
		return nil, fmt.Errorf("clamd %s: %w", s.addr, err)
	}
	st.sess, st.conn = &session{conn: conn}, conn
	if err := st.send(ctx, []byte("zIDSESSION\x00zINSTREAM\x00")); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// idleSession takes a session left by an earlier message, if one is
// fresh and clamd has not closed it.
func (p *Pool) idleSession(s *server) *session {
	for {
		select {
		case sess := <-s.idle:
			if p.opts.Now().Sub(sess.since) < maxIdle && alive(sess.conn) {
				return sess
			}
			sess.conn.Close()
		default:
			return nil
		}
	}
}

// alive reports whether clamd keeps the connection open: a peek that
// would block. An end of file (clamd's idle timeout, a restart) or stray
// bytes mean it is not to be used. (A read with a past deadline would
// not tell: Go answers it with the timeout without looking.)
func alive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	open := false
	raw.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		open = errors.Is(err, syscall.EAGAIN)
		return true
	})
	return open
}

// Ping asks each clamd whether it is there (PING → PONG) and returns one
// error per server that is not.
func (p *Pool) Ping(ctx context.Context) []error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, s := range p.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.ping(ctx, s); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}

func (p *Pool) ping(ctx context.Context, s *server) error {
	d := net.Dialer{Timeout: p.opts.DialTimeout}
	conn, err := d.DialContext(ctx, s.addr.Network, s.addr.Addr)
	if err != nil {
		return fmt.Errorf("clamd %s: %w", s.addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(p.opts.DialTimeout))
	if _, err := conn.Write([]byte("zPING\x00")); err != nil {
		return fmt.Errorf("clamd %s: %w", s.addr, err)
	}
	reply, err := readReply(conn)
	if err != nil {
		return fmt.Errorf("clamd %s: %w", s.addr, err)
	}
	if reply != "PONG" {
		return fmt.Errorf("clamd %s: answered PING with %q", s.addr, printable(reply))
	}
	return nil
}

// Stream is one INSTREAM scan in progress. It is used by one goroutine.
type Stream struct {
	pool   *Pool
	srv    *server
	sess   *session
	conn   net.Conn
	clean  bool // the verdict was read: the session may serve another message
	sent   int64
	prefix [4]byte
	closed bool
	err    error // the first failure; the stream is then dead
}

// Sent is the number of data bytes streamed so far.
func (s *Stream) Sent() int64 { return s.sent }

// Server is the clamd the stream goes to.
func (s *Stream) Server() Address { return s.srv.addr }

// MaxWriteWait bounds one write to clamd, whatever the caller's deadline:
// while it waits, the MTA's next body chunks wait too, and the MTA gives
// up on a milter after 30 s (Postfix's milter_command_timeout).
const MaxWriteWait = 20 * time.Second

// maxChunk keeps each chunk well under clamd's own read buffer limits.
const maxChunk = 1 << 20

// Write streams data as one or more chunks. A deadline from ctx bounds
// the write.
func (s *Stream) Write(ctx context.Context, data []byte) error {
	for len(data) > 0 {
		n := min(len(data), maxChunk)
		binary.BigEndian.PutUint32(s.prefix[:], uint32(n))
		bufs := net.Buffers{s.prefix[:], data[:n]}
		if err := s.sendBuffers(ctx, &bufs); err != nil {
			return err
		}
		s.sent += int64(n)
		data = data[n:]
	}
	return nil
}

func (s *Stream) send(ctx context.Context, b []byte) error {
	bufs := net.Buffers{b}
	return s.sendBuffers(ctx, &bufs)
}

func (s *Stream) sendBuffers(ctx context.Context, bufs *net.Buffers) error {
	if s.err != nil {
		return s.err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dl := time.Now().Add(MaxWriteWait)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	s.conn.SetWriteDeadline(dl)
	if _, err := bufs.WriteTo(s.conn); err != nil {
		s.err = s.failed(err)
		return s.err
	}
	return nil
}

// failed explains a write that failed: clamd may have closed the stream
// early with a reply of its own (StreamMaxLength exceeded), which is
// still there to read.
func (s *Stream) failed(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		s.pool.markDown(s.srv)
		return fmt.Errorf("clamd %s: not reading the stream: %w", s.srv.addr, err)
	}
	s.conn.SetReadDeadline(time.Now().Add(time.Second))
	if reply, rerr := readReply(s.conn); rerr == nil || reply != "" {
		if _, perr := ParseReply(reply); perr != nil {
			return perr
		}
	}
	s.pool.markDown(s.srv)
	return fmt.Errorf("clamd %s: %w", s.srv.addr, err)
}

// Result ends the stream and waits for clamd's verdict while ctx lasts;
// ending ctx (the MTA hung up, the timeout) ends the wait within
// pollInterval.
func (s *Stream) Result(ctx context.Context) (Result, error) {
	var res Result
	if err := s.send(ctx, []byte{0, 0, 0, 0}); err != nil {
		return res, err
	}
	reply, err := s.readReply(ctx)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return res, cerr
		}
		if reply == "" {
			s.pool.markDown(s.srv)
			return res, fmt.Errorf("clamd %s: reading the verdict: %w", s.srv.addr, err)
		}
	}
	res.Virus, err = ParseReply(reply)
	if err != nil {
		return res, fmt.Errorf("clamd %s: %w", s.srv.addr, err)
	}
	s.clean = true
	return res, nil
}

// pollInterval is how often a wait for clamd's verdict looks at its
// context. Polling costs nothing for the usual scan of a few
// milliseconds; a goroutine watching the context (context.AfterFunc)
// cost every message a goroutine and its wake-ups.
const pollInterval = 100 * time.Millisecond

// readReply reads the verdict in slices of pollInterval, checking ctx
// between them.
func (s *Stream) readReply(ctx context.Context) (string, error) {
	var buf [maxReply]byte
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		dl := time.Now().Add(pollInterval)
		if d, ok := ctx.Deadline(); ok && d.Before(dl) {
			dl = d
		}
		s.conn.SetReadDeadline(dl)
		m, err := readInto(s.conn, buf[:], &n)
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return m, err
		}
	}
}

// Close ends the stream. Its connection serves the next message when
// the verdict was read; a stream not finished is abandoned with it.
func (s *Stream) Close() {
	if s.closed {
		return
	}
	s.closed = true
	if s.clean && !s.pool.closed.Load() {
		s.sess.since = s.pool.opts.Now()
		select {
		case s.srv.idle <- s.sess:
			<-s.srv.slots
			if s.pool.closed.Load() { // closed meanwhile: not kept after all
				s.srv.closeIdle()
			}
			return
		default:
		}
	}
	s.conn.Close()
	<-s.srv.slots
}

// readReply reads up to the NUL that ends a z-command's reply, or to
// EOF. What was read comes back even with an error.
func readReply(r io.Reader) (string, error) {
	var buf [maxReply]byte
	n := 0
	return readInto(r, buf[:], &n)
}

// readInto goes on reading a reply into buf, *n bytes of which are read
// already; a timeout leaves them there for the next call.
func readInto(r io.Reader, buf []byte, n *int) (string, error) {
	for *n < len(buf) {
		m, err := r.Read(buf[*n:])
		if i := bytes.IndexByte(buf[*n:*n+m], 0); i >= 0 {
			return string(buf[:*n+i]), nil
		}
		*n += m
		if err != nil {
			if errors.Is(err, io.EOF) && *n > 0 {
				return strings.TrimRight(string(buf[:*n]), "\n"), nil
			}
			return string(buf[:*n]), err
		}
	}
	return string(buf[:*n]), errors.New("reply too long")
}
