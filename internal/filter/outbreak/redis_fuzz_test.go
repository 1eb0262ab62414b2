package outbreak

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mailguard/internal/testserver"
)

// FuzzRedisReply gives the shared store whatever a server on the Redis
// port answers its scripts (go-redis reads the RESP; this checks what we
// make of the values). Whatever the bytes: no panic; Observe gives one
// state per key asked; and the record id Suspect returns is a fingerprint
// id, since it goes into the refusal's text and the samples' header.
func FuzzRedisReply(f *testing.F) {
	id := "s" + strings.Repeat("0123456789abcdef", 2)
	for _, s := range []string{
		"*8\r\n:3\r\n:2\r\n:0\r\n:0\r\n:1\r\n:1\r\n:1\r\n:0\r\n",
		"*2\r\n$33\r\n" + id + "\r\n:1\r\n",
		"*2\r\n$17\r\nc0123456789abcdef\r\n:0\r\n",
		"*2\r\n$8\r\nnot-a-id\r\n:1\r\n",
		"*2\r\n$20\r\nx\r\nX-Injected: yes\r\n\r\n:1\r\n",
		"*2\r\n:5\r\n:1\r\n",
		"*4\r\n:1\r\n:1\r\n:0\r\n:0\r\n", "*0\r\n", "*-1\r\n", "-ERR x\r\n", "*8\r\n:-1\r\n:-1\r\n:7\r\n:7\r\n:0\r\n:0\r\n:0\r\n:0\r\n",
	} {
		f.Add([]byte(s))
	}
	var reply atomic.Pointer[[]byte]
	addr := startScriptServer(f, func() []byte { return *reply.Load() })
	keys := []Key{{1}, {2}}
	f.Fuzz(func(t *testing.T, raw []byte) {
		reply.Store(&raw)
		r, err := NewRedis("redis://"+addr, Settings{Window: time.Hour, MinNetworks: 3, Hold: time.Hour}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if states, err := r.Observe(ctx, keys, "192.0.2.0/24", "a@b"); err == nil && len(states) != len(keys) {
			t.Fatalf("%d states for %d keys", len(states), len(keys))
		}
		got, _, err := r.Suspect(ctx, Sighting{ID: Key{3}, Keys: keys, Networks: 3, Senders: 2, Name: "a.zip", Kind: "zip", Size: 10})
		if err == nil {
			if _, perr := ParseKey(got); perr != nil {
				t.Fatalf("reply %q: record id %q taken", raw, got)
			}
		}
	})
}

// startScriptServer is a stand-in Redis: it answers the connection
// set-up as a Redis without HELLO would, and every script with reply();
// the connection then ends, so a reply cut short is not a wait.
func startScriptServer(f *testing.F, reply func() []byte) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
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
					case "EVALSHA", "EVAL":
						c.Write(reply())
						return
					default:
						io.WriteString(c, "+OK\r\n")
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}
