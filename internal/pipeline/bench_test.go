package pipeline

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
)

// BenchmarkConnection is one SMTP session's connection state on the
// pipeline: open (which takes a use of the pipeline), connect, close; on
// one core, and on all at once (sessions opening on every core count
// their uses in one word).
func BenchmarkConnection(b *testing.B) {
	f := &connFilter{fakeFilter: fakeFilter{name: "c", reads: StageConnect, open: new(atomic.Int64)}}
	p := New(Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, Member{Filter: f})
	session := func() {
		cn := p.Open(context.Background(), &Conn{Addr: "192.0.2.1"})
		cn.Connect()
		cn.Close()
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			session()
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				session()
			}
		})
	})
}
