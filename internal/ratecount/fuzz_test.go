package ratecount

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"mailguard/internal/testserver"
)

// FuzzRedisReply gives Take whatever a server on the Redis port answers
// the counting script (a wrong server, a proxy, a truncated or hostile
// reply): go-redis reads the RESP, this checks what we make of the
// values. Whatever the bytes: no panic, and without an error the op that
// was over is one of those asked (its callers index their rules with it)
// and its count is not negative.
func FuzzRedisReply(f *testing.F) {
	for _, s := range []string{
		"*2\r\n:-1\r\n:0\r\n", // all taken: what Redis answers
		"*2\r\n:1\r\n:10\r\n", // the second op over, at 10
		"*2\r\n:0\r\n:3\r\n",
		"*0\r\n", "*1\r\n:0\r\n", "*2\r\n:7\r\n:1\r\n", "*2\r\n:-5\r\n:1\r\n", "*2\r\n:0\r\n:-1\r\n",
		"*3\r\n:-1\r\n:0\r\n:0\r\n", "*2\r\n$2\r\n-1\r\n:0\r\n", "*-1\r\n", "$-1\r\n", ":1\r\n",
		"-NOSCRIPT No matching script\r\n", "-ERR busy\r\n", "*2\r\n:-1\r\n", "%1\r\n:1\r\n:2\r\n", "_\r\n",
	} {
		f.Add([]byte(s))
	}
	srv := startReplyServer(f)
	f.Fuzz(func(t *testing.T, reply []byte) {
		over, count, err := srv.take(t, reply)
		if err != nil {
			if over != -1 {
				t.Fatalf("an error (%v) with op %d over", err, over)
			}
			return
		}
		if over < -1 || over >= len(replyOps) {
			t.Fatalf("reply %q: op %d over, of %d asked", reply, over, len(replyOps))
		}
		if over >= 0 && count < 0 {
			t.Fatalf("reply %q: a count of %d", reply, count)
		}
	})
}

var replyOps = []Op{
	{Key: "client:192.0.2.1", N: 1, Limit: 10, Window: time.Minute},
	{Key: "conc:192.0.2.1", N: 1, Limit: 5, Holder: "h1"},
}

// TestRedisReplyShapes: the script's answer is believed only in its own
// shape, {over, count} with over one of the ops asked.
func TestRedisReplyShapes(t *testing.T) {
	srv := startReplyServer(t)
	for _, c := range []struct {
		reply       string
		over, count int64
		ok          bool
	}{
		{"*2\r\n:-1\r\n:0\r\n", -1, 0, true},
		{"*2\r\n:1\r\n:10\r\n", 1, 10, true},
		{"*0\r\n", -1, 0, false},
		{"*1\r\n:0\r\n", -1, 0, false},
		{"*2\r\n:2\r\n:1\r\n", -1, 0, false}, // there is no third op
		{"*2\r\n:-2\r\n:1\r\n", -1, 0, false},
		{"*2\r\n:0\r\n:-1\r\n", -1, 0, false},
		{"*3\r\n:-1\r\n:0\r\n:0\r\n", -1, 0, false},
	} {
		over, count, err := srv.take(t, []byte(c.reply))
		if (err == nil) != c.ok || int64(over) != c.over || count != c.count {
			t.Errorf("%q: over %d, count %d, err %v; want %d, %d, ok %v", c.reply, over, count, err, c.over, c.count, c.ok)
		}
	}
}

// replyServer is a stand-in Redis: it answers the connection set-up as a
// Redis without HELLO would, and any script with the next reply it is
// given.
type replyServer struct {
	addr  string
	reply chan []byte
}

func startReplyServer(f testing.TB) *replyServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	s := &replyServer{addr: ln.Addr().String(), reply: make(chan []byte, 1)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return s
}

// take asks a new client to count replyOps, the server answering reply.
func (s *replyServer) take(t *testing.T, reply []byte) (int, int64, error) {
	s.reply <- reply
	r, err := NewRedis("redis://"+s.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return r.Take(ctx, replyOps)
}

func (s *replyServer) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for {
		cmd, err := testserver.ReadRESPCommand(br)
		if err != nil {
			return
		}
		switch strings.ToUpper(cmd) {
		case "HELLO":
			io.WriteString(c, "-ERR unknown command 'HELLO'\r\n")
		case "PING":
			io.WriteString(c, "+PONG\r\n")
		case "EVALSHA", "EVAL":
			select {
			case r := <-s.reply:
				c.Write(r)
			default:
				io.WriteString(c, "-ERR no reply left\r\n")
			}
			return // a reply cut short ends with the connection, not a timeout
		default:
			io.WriteString(c, "+OK\r\n")
		}
	}
}
