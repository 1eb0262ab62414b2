// Package dovecotauth asks Dovecot's auth server about users: the USER
// request of its auth-master protocol, on the auth-userdb socket (what
// Dovecot's own delivery agent and doveadm use). A reply is the user's
// userdb fields: home, mail, uid, quota_rule and whatever extra fields
// the userdb returns.
//
// The protocol is lines of tab-separated fields; a field's tabs and line
// ends are escaped with \x01 ("\x01t", "\x01n", "\x01r", "\x010" for
// NUL, "\x011" for \x01 itself):
//
//	> VERSION	1	0
//	> USER	1	alice@example.edu	service=mailguard
//	< VERSION	1	2
//	< SPID	1234
//	< USER	1	alice@example.edu	home=/var/mail/alice	quota_rule=*:storage=1G
//
// or "NOTFOUND	1", or "FAIL	1	reason=...".
package dovecotauth

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Reply is one user's answer.
type Reply struct {
	Found  bool
	User   string            // as the userdb names it
	Fields map[string]string // key=value; a bare key has ""
}

// ErrFail is Dovecot's FAIL: it could not look the user up (its
// database is down, say), which is not "no such user".
var ErrFail = errors.New("dovecot auth: lookup failed")

// maxLine bounds one reply line; Dovecot's own client takes 8 KiB.
const maxLine = 64 << 10

// DefaultTimeout bounds a lookup when ctx has no earlier deadline.
const DefaultTimeout = 2 * time.Second

// maxIdle connections are kept between lookups.
const maxIdle = 8

// DefaultIdleTime is how long a connection is kept unused (Dovecot's own
// client keeps one 60 s).
const DefaultIdleTime = time.Minute

// Client looks users up. It keeps a few connections open between
// lookups, one lookup at a time on each; it is safe for concurrent use.
type Client struct {
	// Path is the auth-userdb socket, such as /run/dovecot/auth-userdb.
	Path string
	// Service is sent as service= ("mailguard" when empty): userdbs may
	// answer differently per service.
	Service string
	// Timeout bounds a lookup; 0 is DefaultTimeout.
	Timeout time.Duration
	// IdleTime closes a connection unused this long (0: DefaultIdleTime),
	// so a Client a reload left behind lets its connections go by itself.
	IdleTime time.Duration

	mu    sync.Mutex
	idle  []*conn
	id    uint32
	sweep *time.Timer
}

type conn struct {
	c    net.Conn
	r    *bufio.Reader
	used time.Time
}

// Close closes the idle connections.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cn := range c.idle {
		cn.c.Close()
	}
	c.idle = nil
	if c.sweep != nil {
		c.sweep.Stop()
		c.sweep = nil
	}
	return nil
}

// Lookup asks for one user. A user name Dovecot's protocol cannot carry
// (tabs, line ends, NUL) names no user.
func (c *Client) Lookup(ctx context.Context, user string) (Reply, error) {
	if user == "" || strings.ContainsAny(user, "\t\r\n\x00") || len(user) > 1024 {
		return Reply{}, nil
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	for attempt := 0; ; attempt++ {
		cn, reused, err := c.get(ctx, deadline)
		if err != nil {
			return Reply{}, err
		}
		rep, err := c.ask(ctx, cn, user, deadline)
		if err == nil {
			c.put(cn)
			return rep, nil
		}
		cn.c.Close()
		// A kept connection the server closed meanwhile (Dovecot
		// restarted): once more on a new one.
		if !reused || attempt > 0 || errors.Is(err, ErrFail) || ctx.Err() != nil || time.Now().After(deadline) {
			return Reply{}, err
		}
	}
}

func (c *Client) get(ctx context.Context, deadline time.Time) (*conn, bool, error) {
	c.mu.Lock()
	if n := len(c.idle); n > 0 {
		cn := c.idle[n-1]
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		return cn, true, nil
	}
	c.mu.Unlock()
	d := net.Dialer{Deadline: deadline}
	nc, err := d.DialContext(ctx, "unix", c.Path)
	if err != nil {
		return nil, false, fmt.Errorf("dovecot auth %s: %w", c.Path, err)
	}
	// The handshake goes out with the first request; Dovecot's greeting
	// (VERSION, SPID) is read before its reply.
	if _, err := nc.Write([]byte("VERSION\t1\t0\n")); err != nil {
		nc.Close()
		return nil, false, fmt.Errorf("dovecot auth %s: %w", c.Path, err)
	}
	cn := &conn{c: nc, r: bufio.NewReaderSize(nc, 4096)}
	return cn, false, nil
}

func (c *Client) put(cn *conn) {
	cn.c.SetDeadline(time.Time{})
	cn.used = time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.idle) >= maxIdle {
		cn.c.Close()
		return
	}
	c.idle = append(c.idle, cn)
	if c.sweep == nil {
		c.sweep = time.AfterFunc(c.idleTime(), c.closeIdle)
	}
}

func (c *Client) idleTime() time.Duration {
	if c.IdleTime > 0 {
		return c.IdleTime
	}
	return DefaultIdleTime
}

// closeIdle closes the connections unused for IdleTime, and comes back
// while some remain.
func (c *Client) closeIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	keep := c.idle[:0]
	for _, cn := range c.idle {
		if time.Since(cn.used) >= c.idleTime() {
			cn.c.Close()
		} else {
			keep = append(keep, cn)
		}
	}
	clear(c.idle[len(keep):])
	c.idle = keep
	c.sweep = nil
	if len(c.idle) > 0 {
		c.sweep = time.AfterFunc(c.idleTime(), c.closeIdle)
	}
}

func (c *Client) nextID() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.id++
	if c.id == 0 {
		c.id = 1
	}
	return c.id
}

func (c *Client) ask(ctx context.Context, cn *conn, user string, deadline time.Time) (Reply, error) {
	cn.c.SetDeadline(deadline)
	// A cancelled call ends the wait at once.
	stop := context.AfterFunc(ctx, func() { cn.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	service := c.Service
	if service == "" {
		service = "mailguard"
	}
	id := strconv.FormatUint(uint64(c.nextID()), 10)
	if _, err := fmt.Fprintf(cn.c, "USER\t%s\t%s\tservice=%s\n", id, user, service); err != nil {
		return Reply{}, c.wrap(ctx, err)
	}
	for {
		line, err := readLine(cn.r)
		if err != nil {
			return Reply{}, c.wrap(ctx, err)
		}
		rep, done, err := ParseReply(line, id)
		if err != nil || done {
			return rep, err
		}
	}
}

func (c *Client) wrap(ctx context.Context, err error) error {
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		err = ctx.Err()
	case errors.As(err, &ne) && ne.Timeout():
		err = context.DeadlineExceeded // the lookup's own timeout
	}
	return fmt.Errorf("dovecot auth %s: %w", c.Path, err)
}

// readLine reads one line without its end, refusing one over maxLine.
func readLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		part, isPrefix, err := r.ReadLine()
		if err != nil {
			return "", err
		}
		if len(b)+len(part) > maxLine {
			return "", fmt.Errorf("reply line longer than %d bytes", maxLine)
		}
		b = append(b, part...)
		if !isPrefix {
			return string(b), nil
		}
	}
}

// ParseReply reads one line from the server, for the request id: done
// says it was the answer (not the greeting).
func ParseReply(line, id string) (rep Reply, done bool, err error) {
	f := strings.Split(line, "\t")
	switch f[0] {
	case "VERSION":
		if len(f) < 3 || f[1] != "1" {
			return Reply{}, true, fmt.Errorf("auth protocol version %q, want 1", strings.Join(f[1:], "."))
		}
		return Reply{}, false, nil
	case "SPID":
		return Reply{}, false, nil
	case "CUID", "MECH", "COOKIE", "DONE":
		return Reply{}, true, errors.New("this is an auth client socket (such as auth-client); want the auth-userdb or auth-master socket")
	}
	if len(f) < 2 || f[1] != id {
		return Reply{}, true, fmt.Errorf("unexpected reply %q", clip(line))
	}
	switch f[0] {
	case "NOTFOUND":
		return Reply{}, true, nil
	case "FAIL":
		for _, kv := range f[2:] {
			if reason, ok := strings.CutPrefix(kv, "reason="); ok {
				return Reply{}, true, fmt.Errorf("%w: %s", ErrFail, clip(Unescape(reason)))
			}
		}
		return Reply{}, true, ErrFail
	case "USER":
		if len(f) < 3 || f[2] == "" {
			return Reply{}, true, errors.New("USER reply without a user name")
		}
		rep := Reply{Found: true, User: Unescape(f[2]), Fields: make(map[string]string, len(f)-3)}
		for _, kv := range f[3:] {
			k, v, _ := strings.Cut(kv, "=")
			rep.Fields[Unescape(k)] = Unescape(v)
		}
		return rep, true, nil
	}
	return Reply{}, true, fmt.Errorf("unknown reply %q", clip(line))
}

// Unescape undoes Dovecot's tab escaping.
func Unescape(s string) string {
	if !strings.Contains(s, "\x01") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\x01' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		i++
		switch s[i] {
		case '0':
			b.WriteByte(0)
		case '1':
			b.WriteByte(1)
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case 'n':
			b.WriteByte('\n')
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

func clip(s string) string {
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}
