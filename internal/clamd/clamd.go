// Package clamd talks to ClamAV's scanning daemon: it streams data to be
// scanned with the INSTREAM command (length-prefixed chunks, a zero-length
// chunk at the end) and reads clamd's verdict. A Pool spreads streams over
// several clamd servers, round-robin, passing over one whose connections
// are all in use; it leaves out for a while a server that failed, timed
// out or stopped answering PING (a hung clamd still accepts connections),
// and bounds the connections open to each, idle ones included.
package clamd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	// MaxConns bounds the connections open to each clamd at once, those
	// kept idle between messages included (default 20).
	MaxConns int
	// DialTimeout bounds connecting to one clamd, and the PING that tells
	// whether one left out is back (default 2 s).
	DialTimeout time.Duration
	// RetryAfter is how long a clamd that failed is left out while
	// another is up (default 10 s); then a PING decides whether it is
	// back.
	RetryAfter time.Duration
	// SlowVerdict is how long a verdict may take before the clamd is
	// asked for a PING on a connection of its own (default 5 s): one
	// that does not answer is left out, so that the next messages go to
	// another while this one waits for its verdict.
	SlowVerdict time.Duration
	// Log, when set, gets a line when a clamd is left out and when it is
	// back.
	Log *slog.Logger
	// Now is the clock (tests).
	Now func() time.Time
}

// Pool is a set of clamd servers. It is safe for concurrent use.
type Pool struct {
	servers []*server
	opts    PoolOptions

	mu      sync.Mutex
	next    int           // the server to start at, in turn
	freed   chan struct{} // closed (and replaced) when a connection frees
	waiters int           // Opens waiting on freed
	closed  bool          // Close ran: no session is kept idle
}

// server is one clamd; its fields but addr are guarded by Pool.mu.
type server struct {
	addr      Address
	busy      int        // streams in progress
	idle      []*session // connections kept between messages, oldest first
	downUntil time.Time  // zero: up
	probing   bool       // a PING is asking whether it is there
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
	if opts.SlowVerdict <= 0 {
		opts.SlowVerdict = 5 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	p := &Pool{opts: opts, freed: make(chan struct{})}
	for _, a := range addrs {
		p.servers = append(p.servers, &server{addr: a})
	}
	return p
}

// Addresses lists the pool's servers.
func (p *Pool) Addresses() []Address {
	out := make([]Address, len(p.servers))
	for i, s := range p.servers {
		out[i] = s.addr
	}
	return out
}

// Connections counts the pool's connections: busy with a stream, and
// kept idle for the next message.
func (p *Pool) Connections() (busy, idle int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.servers {
		busy += s.busy
		idle += len(s.idle)
	}
	return busy, idle
}

// Down lists the servers left out now.
func (p *Pool) Down() []Address {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Address
	for _, s := range p.servers {
		if !s.downUntil.IsZero() {
			out = append(out, s.addr)
		}
	}
	return out
}

// candidates is the servers a stream may go to, in the order to try
// them: those up, starting at the next in turn; when none is up, those
// left out, the one left out longest first. Servers in skip (failed
// for this stream already) are not candidates. A server whose time out
// is over is asked for a PING meanwhile, and comes back only if it
// answers: a hung clamd would otherwise get a message each time. p.mu
// is held.
func (p *Pool) candidates(skip []bool) []*server {
	n := len(p.servers)
	start := p.next % n
	p.next++
	now := p.opts.Now()
	up := make([]*server, 0, n)
	var down []*server
	for i := range n {
		j := (start + i) % n
		s := p.servers[j]
		switch {
		case skip[j]:
		case s.downUntil.IsZero():
			up = append(up, s)
		default:
			if !now.Before(s.downUntil) {
				p.probeLocked(s)
			}
			down = append(down, s)
		}
	}
	if len(up) > 0 {
		return up
	}
	slices.SortStableFunc(down, func(a, b *server) int { return a.downUntil.Compare(b.downUntil) })
	return down
}

// reserve takes a connection slot on the first candidate with one free
// (an idle session, or room for a new connection), and returns it with
// the idle session to reuse, if any. With every candidate busy it
// returns the channel that tells when a connection frees; with no
// candidate left, neither.
func (p *Pool) reserve(skip []bool) (s *server, idle *session, freed <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cands := p.candidates(skip)
	for _, s := range cands {
		p.pruneLocked(s)
		if n := len(s.idle); n > 0 {
			idle, s.idle = s.idle[n-1], s.idle[:n-1]
			s.busy++
			return s, idle, nil
		}
		if s.busy < p.opts.MaxConns {
			s.busy++
			return s, nil, nil
		}
	}
	if len(cands) == 0 {
		return nil, nil, nil
	}
	p.waiters++
	return nil, nil, p.freed
}

// pruneLocked closes the sessions idle too long for clamd to keep them.
func (p *Pool) pruneLocked(s *server) {
	now := p.opts.Now()
	n := 0
	for n < len(s.idle) && now.Sub(s.idle[n].since) >= maxIdle {
		s.idle[n].conn.Close()
		n++
	}
	if n > 0 {
		s.idle = slices.Delete(s.idle, 0, n)
		p.wakeLocked()
	}
}

// wakeLocked tells those waiting for a connection that one freed; with
// none waiting, as nearly always, it costs nothing.
func (p *Pool) wakeLocked() {
	if p.waiters > 0 {
		close(p.freed)
		p.freed = make(chan struct{})
		p.waiters = 0
	}
}

// release gives a stream's connection slot back, keeping its session
// for the next message when sess is not nil.
func (p *Pool) release(s *server, sess *session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s.busy--
	if sess != nil {
		if s.downUntil.IsZero() && !p.closed {
			sess.since = p.opts.Now()
			s.idle = append(s.idle, sess)
		} else {
			sess.conn.Close()
		}
	}
	p.wakeLocked()
}

// Close closes the idle sessions, and those of streams still open when
// they end: a closed pool keeps none for the next message. Streams may
// still be opened (each on a connection of its own), so a message in
// flight on a replaced filter is not failed by its close.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, s := range p.servers {
		for _, sess := range s.idle {
			sess.conn.Close()
		}
		s.idle = nil
	}
	return nil
}

// markDown leaves a server out for RetryAfter, and closes its idle
// sessions: a clamd that failed one connection is not trusted with the
// others.
func (p *Pool) markDown(s *server, why error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.markDownLocked(s, why)
}

func (p *Pool) markDownLocked(s *server, why error) {
	if s.downUntil.IsZero() && p.opts.Log != nil {
		p.opts.Log.Warn("clamd left out", "clamd", s.addr.String(), "for", p.opts.RetryAfter.String(), "reason", why.Error())
	}
	s.downUntil = p.opts.Now().Add(p.opts.RetryAfter)
	for _, sess := range s.idle {
		sess.conn.Close()
	}
	s.idle = nil
	p.wakeLocked() // a waiting stream may now go elsewhere
}

// probeLocked asks a server for a PING, in the background, unless one
// is under way: it is marked up if it answers, left out again if not.
func (p *Pool) probeLocked(s *server) {
	if s.probing {
		return
	}
	s.probing = true
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), p.opts.DialTimeout)
		err := p.ping(ctx, s)
		cancel()
		p.mu.Lock()
		defer p.mu.Unlock()
		s.probing = false
		if err != nil {
			p.markDownLocked(s, err)
			return
		}
		if !s.downUntil.IsZero() {
			s.downUntil = time.Time{}
			p.wakeLocked()
			if p.opts.Log != nil {
				p.opts.Log.Info("clamd back", "clamd", s.addr.String())
			}
		}
	}()
}

// suspect asks a server that is slow to answer for a PING.
func (p *Pool) suspect(s *server) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.probeLocked(s)
}

// Open starts a stream on a clamd. It tries every server that is up and
// has a connection free, in turn, and a server left out only when none
// is up; a server that cannot be reached is left out and the next one
// tried. Only with every connection busy does it wait, for the first to
// free on any server, while ctx lasts.
func (p *Pool) Open(ctx context.Context) (*Stream, error) {
	var errs []error
	skip := make([]bool, len(p.servers))
	for {
		s, sess, freed := p.reserve(skip)
		if s == nil && freed == nil {
			return nil, errors.Join(errs...)
		}
		if s == nil {
			select {
			case <-freed:
				continue
			case <-ctx.Done():
				return nil, errors.Join(append(errs, ErrBusy)...)
			}
		}
		st, err := p.start(ctx, s, sess)
		if err == nil {
			return st, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			return nil, errors.Join(errs...)
		}
		skip[slices.Index(p.servers, s)] = true
	}
}

// start begins a stream on a connection slot reserve took: on the idle
// session when clamd still keeps it, else on a new connection.
func (p *Pool) start(ctx context.Context, s *server, sess *session) (*Stream, error) {
	st := &Stream{pool: p, srv: s}
	if sess != nil {
		if alive(sess.conn) {
			sess.conn.SetWriteDeadline(time.Now().Add(p.opts.DialTimeout))
			if _, err := sess.conn.Write([]byte("zINSTREAM\x00")); err == nil {
				st.sess, st.conn = sess, sess.conn
				return st, nil
			}
		}
		// Closed under us (clamd's idle timeout, a restart): a new
		// connection instead, the server not blamed for it.
		sess.conn.Close()
	}
	d := net.Dialer{Timeout: p.opts.DialTimeout}
	conn, err := d.DialContext(ctx, s.addr.Network, s.addr.Addr)
	if err != nil {
		err = fmt.Errorf("clamd %s: %w", s.addr, err)
		if ctx.Err() == nil {
			p.markDown(s, err)
		}
		p.release(s, nil)
		return nil, err
	}
	st.sess, st.conn = &session{conn: conn}, conn
	if err := st.send(ctx, []byte("zIDSESSION\x00zINSTREAM\x00")); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
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
		err = fmt.Errorf("clamd %s: not reading the stream: %w", s.srv.addr, err)
		s.pool.markDown(s.srv, err)
		return err
	}
	s.conn.SetReadDeadline(time.Now().Add(time.Second))
	if reply, rerr := readReply(s.conn); rerr == nil || reply != "" {
		if _, perr := ParseReply(reply); perr != nil {
			return perr
		}
	}
	err = fmt.Errorf("clamd %s: %w", s.srv.addr, err)
	s.pool.markDown(s.srv, err)
	return err
}

// Result ends the stream and waits for clamd's verdict while ctx lasts;
// ending ctx (the MTA hung up, the timeout) ends the wait within
// pollInterval. A clamd that gives no verdict before ctx's deadline is
// left out, as one that refuses connections is: it is hung or
// overwhelmed, and the next messages are better sent elsewhere.
func (s *Stream) Result(ctx context.Context) (Result, error) {
	var res Result
	if err := s.send(ctx, []byte{0, 0, 0, 0}); err != nil {
		return res, err
	}
	reply, err := s.readReply(ctx)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			if errors.Is(cerr, context.DeadlineExceeded) {
				s.pool.markDown(s.srv, errors.New("no verdict before the timeout"))
			}
			return res, cerr
		}
		if reply == "" {
			err = fmt.Errorf("clamd %s: reading the verdict: %w", s.srv.addr, err)
			s.pool.markDown(s.srv, err)
			return res, err
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
// between them. Past SlowVerdict it has the server asked for a PING,
// once: a hung clamd is then left out within seconds, not at the end
// of every waiting message's timeout.
func (s *Stream) readReply(ctx context.Context) (string, error) {
	var buf [maxReply]byte
	n := 0
	suspectAt := time.Now().Add(s.pool.opts.SlowVerdict)
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		now := time.Now()
		if !suspectAt.IsZero() && !now.Before(suspectAt) {
			s.pool.suspect(s.srv)
			suspectAt = time.Time{}
		}
		dl := now.Add(pollInterval)
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

// Close ends the stream and gives its connection slot back, always;
// it is safe to call more than once. The connection serves the next
// message when the verdict was read; a stream not finished is
// abandoned with it.
func (s *Stream) Close() {
	if s.closed {
		return
	}
	s.closed = true
	if s.clean {
		s.pool.release(s.srv, s.sess)
		return
	}
	s.conn.Close()
	s.pool.release(s.srv, nil)
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
