package pipeline

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"mailguard/internal/metrics"
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

// BenchmarkMessageMetrics is one message (MAIL, RCPT, 12 header fields,
// 2 body chunks, end) through two filters, without metrics and with them
// (every call timed, the message and its verdict counted, the decision
// recorded for the status page): the metrics' own cost per message. Run
// with -count N, the two alternate.
func BenchmarkMessageMetrics(b *testing.B) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	chunk := make([]byte, 65535)
	for _, on := range []bool{false, true} {
		env := Env{Log: log}
		name := "off"
		if on {
			env.Metrics, name = metrics.NewCore(prometheus.NewRegistry(), time.Now), "on"
		}
		all := StageMail | StageRcpt | StageHeader | StageEndOfHeaders | StageBody | StageEndOfMessage
		p := New(env, Member{Filter: &fakeFilter{name: "a", reads: all, open: new(atomic.Int64)}},
			Member{Filter: &fakeFilter{name: "b", reads: StageBody | StageEndOfMessage, open: new(atomic.Int64)}})
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				m, _ := p.Begin(&Conn{Addr: "192.0.2.1"}, AllStages, "sender@example.org", "")
				m.Rcpt("user@example.edu", "")
				for range 12 {
					m.Header("Received", "from somewhere by somewhere else")
				}
				m.EndOfHeaders()
				m.Body(chunk)
				m.Body(chunk[:1000])
				m.End()
				m.Close()
			}
		})
	}
}
