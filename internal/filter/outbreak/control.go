package outbreak

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The control socket lets `mailguard outbreak list` and `release` reach
// the running daemon's state. It is a unix socket (never a network port)
// in the samples folder, which only mailguard's user may enter (the
// folder is checked as the samples are); the socket itself is mode 0600.
// One request per connection, one line: "list" or "release ID", where ID
// must parse as a fingerprint id; the answer is one JSON object.

// ControlSocket is the control socket's path for a samples folder.
func ControlSocket(samplesDir string) string { return filepath.Join(samplesDir, "control") }

// maxSocketPath is what a unix socket's address holds (sun_path, less
// its terminating NUL).
const maxSocketPath = 107

const maxRequest = 256

// Request is a control request, as parsed.
type Request struct {
	Op string // "list" or "release"
	ID string // for release: a fingerprint id
}

// ParseRequest reads one request line.
func ParseRequest(line string) (Request, error) {
	line = strings.TrimRight(line, "\r\n")
	if len(line) > maxRequest {
		return Request{}, errors.New("request too long")
	}
	op, arg, _ := strings.Cut(line, " ")
	switch op {
	case "list":
		if arg != "" {
			return Request{}, errors.New("list takes no argument")
		}
		return Request{Op: op}, nil
	case "release":
		if _, err := ParseKey(arg); err != nil {
			return Request{}, err
		}
		return Request{Op: op, ID: arg}, nil
	}
	return Request{}, fmt.Errorf("unknown request %q: want list or release ID", clipID(op))
}

// Reply is the control socket's answer.
type Reply struct {
	Records  []Record `json:"records,omitempty"`
	Released bool     `json:"released,omitempty"`
	Error    string   `json:"error,omitempty"`
}

type controlServer struct {
	ln    net.Listener
	store func() Store
	log   *slog.Logger
	wg    sync.WaitGroup
}

// listenControl opens the control socket. A stale socket (a crash left
// it; nothing answers) is replaced; a live one belongs to another
// mailguard (a daemon, while this is `mailguard scan`) and is left alone:
// then this process has no control socket, and says so.
func listenControl(path string, store func() Store, log *slog.Logger) (*controlServer, error) {
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("control socket %s: the path is longer than a unix socket allows (%d bytes); choose a shorter samples folder", path, maxSocketPath)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket: refused", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	s := &controlServer{ln: ln, store: store, log: log}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *controlServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c)
		}()
	}
}

func (s *controlServer) handle(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReaderSize(&limitedConn{c, maxRequest + 2}, maxRequest+2).ReadString('\n')
	var reply Reply
	req, perr := ParseRequest(line)
	switch {
	case err != nil && line == "":
		return
	case perr != nil:
		reply.Error = perr.Error()
	default:
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		reply = Do(ctx, s.store(), req)
		if req.Op == "release" && reply.Released {
			s.log.Warn("outbreak: fingerprint released", "id", req.ID)
		}
	}
	json.NewEncoder(c).Encode(reply)
}

// Do carries out a request on a store.
func Do(ctx context.Context, st Store, req Request) Reply {
	var reply Reply
	switch req.Op {
	case "list":
		rs, err := st.List(ctx)
		if err != nil {
			reply.Error = err.Error()
		}
		reply.Records = rs
	case "release":
		ok, err := st.Release(ctx, req.ID)
		switch {
		case err != nil:
			reply.Error = err.Error()
		case !ok:
			reply.Error = fmt.Sprintf("no suspect fingerprint %s", req.ID)
		default:
			reply.Released = true
		}
	}
	return reply
}

func (s *controlServer) Close() error {
	err := s.ln.Close()
	s.wg.Wait()
	return err
}

// limitedConn stops reading a request past its bound.
type limitedConn struct {
	c net.Conn
	n int
}

func (l *limitedConn) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("request too long")
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.c.Read(p)
	l.n -= n
	return n, err
}

// Ask sends one request to a daemon's control socket.
func Ask(ctx context.Context, socket string, req Request) (Reply, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	line := req.Op
	if req.ID != "" {
		line += " " + req.ID
	}
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return Reply{}, err
	}
	var reply Reply
	if err := json.NewDecoder(c).Decode(&reply); err != nil {
		return Reply{}, fmt.Errorf("control socket %s: %w", socket, err)
	}
	return reply, nil
}
