package clamd

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// FuzzStreamReply gives a stream whatever clamd answers it, on the wire
// (the NUL-ended reply of a session, or bytes then the end of the
// connection), then sends the next message. Whatever the bytes: no panic;
// the verdict is what ParseReply makes of the reply up to its NUL, a
// virus name fit for a log line and an SMTP reply; the connection slot is
// free again after Close; and the next message gets its own verdict,
// never what was left of this one's reply.
func FuzzStreamReply(f *testing.F) {
	for _, s := range []string{"1: stream: OK\x00", "1: stream: Eicar-Test-Signature FOUND\x00", "stream: OK", "1: stream: OK\x00extra",
		"1: INSTREAM size limit exceeded. ERROR\x00", "1: stream: \r\nX FOUND\x00", "1: stream:  FOUND\x00", "", "\x00",
		"1: stream: OK\x002: stream: OK\x00", "1: UNKNOWN COMMAND\x00", strings.Repeat("x", 1100)} {
		f.Add([]byte(s))
	}
	replies := make(chan []byte, 1)
	addr := fakeClamd(f, func(c net.Conn) {
		defer c.Close()
		for id := 1; ; id++ {
			if _, err := readStream(c, 1<<20); err != nil {
				return
			}
			select {
			case r := <-replies:
				c.Write(r)
				if bytes.IndexByte(r, 0) < 0 {
					return // no NUL: the reply ends with the connection
				}
			default:
				fmt.Fprintf(c, "%d: stream: Next.Message FOUND\x00", id)
			}
		}
	})
	f.Fuzz(func(t *testing.T, reply []byte) {
		p := NewPool([]Address{addr}, PoolOptions{MaxConns: 1, DialTimeout: time.Second})
		defer p.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		replies <- reply
		res, err := scanOnce(ctx, p)
		// What the reply says, read here: up to its NUL, else up to the end.
		said, short := reply, false
		if i := bytes.IndexByte(reply, 0); i >= 0 {
			said = reply[:i]
		} else {
			said, short = bytes.TrimRight(said, "\n"), len(reply) == 0
		}
		if len(said) >= maxReply {
			if err == nil {
				t.Fatalf("a reply of %d bytes taken: %+v", len(said), res)
			}
		} else if virus, perr := ParseReply(string(said)); !short && ((perr == nil) != (err == nil) || virus != res.Virus) {
			t.Fatalf("reply %q: virus %q, error %v; it says %q, %v", reply, res.Virus, err, virus, perr)
		}
		if strings.ContainsAny(res.Virus, "\r\n\x00") {
			t.Fatalf("virus name %q", res.Virus)
		}
		if busy, _ := p.Connections(); busy != 0 {
			t.Fatalf("%d connection slots held after Close", busy)
		}
		next, err := scanOnce(ctx, p)
		if err == nil && next.Virus != "Next.Message" {
			t.Fatalf("after reply %q, the next message's verdict is %+v", reply, next)
		}
		select {
		case <-replies: // the first stream never got as far as its reply
		default:
		}
	})
}

func scanOnce(ctx context.Context, p *Pool) (Result, error) {
	st, err := p.Open(ctx)
	if err != nil {
		return Result{}, err
	}
	defer st.Close()
	if err := st.Write(ctx, []byte("message")); err != nil {
		return Result{}, err
	}
	return st.Result(ctx)
}
