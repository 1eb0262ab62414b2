package clamd

import (
	"context"
	"net"
	"path/filepath"
	"testing"
)

// BenchmarkStream is the pool's cost per message: a stream opened on a
// kept session, a small message, the verdict, the session kept again
// (the stand-in clamd's side included).
func BenchmarkStream(b *testing.B) {
	addr := fakeClamdB(b)
	p := NewPool([]Address{addr, addr}, PoolOptions{})
	msg := make([]byte, 4096)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			st, err := p.Open(ctx)
			if err != nil {
				b.Fatal(err)
			}
			st.Write(ctx, msg)
			if _, err := st.Result(ctx); err != nil {
				b.Fatal(err)
			}
			st.Close()
		}
	})
}

// fakeClamdB is a stand-in clamd answering every stream clean, for
// benchmarks.
func fakeClamdB(b *testing.B) Address {
	path := filepath.Join(b.TempDir(), "fake.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for readStreamOK(c) {
				}
			}()
		}
	}()
	return Address{"unix", path}
}
