package dovecotpolicy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"

	"mailguard/internal/ratecount"
	"mailguard/internal/testserver"
)

// BenchmarkDoor is one command=allow and one command=report as Dovecot
// sends them, over HTTP on loopback with kept-alive connections, counted
// in memory and in a real Redis, interleaved in one run.
func BenchmarkDoor(b *testing.B) {
	redis := testserver.StartRedis(b)
	rc, err := ratecount.NewRedis(redis.URL(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	c := guessingConfig()
	c.Rules = append(c.Rules, RuleConfig{Name: "account", Event: "failure", Key: "user", Limit: 1 << 30, Window: "1h", Action: "delay:2s"})
	for _, backend := range []struct {
		name    string
		counter ratecount.Counter
	}{{"memory", ratecount.NewMemory(nil)}, {"redis", rc}} {
		d := newDoor(b, c, backend.counter)
		b.Run(backend.name+"/policy", func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				req := &Request{Login: fmt.Sprintf("user%d", i%1000), PasswordHash: "abc", Remote: fmt.Sprintf("192.0.%d.%d", i%250, i%200)}
				st := d.h.state.Load()
				if _, err := st.policy.Allow(context.Background(), req); err != nil {
					b.Fatal(err)
				}
				if err := st.policy.Report(context.Background(), req); err != nil {
					b.Fatal(err)
				}
			}
		})
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
		b.Run(backend.name+"/http", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					body := []byte(fmt.Sprintf(`{"login":"user%d","pwhash":"abc","remote":"192.0.%d.%d","protocol":"imap","success":false}`, i%1000, i%250, i%200))
					for _, cmd := range []string{"allow", "report"} {
						resp, err := client.Post(d.url+"/?command="+cmd, "application/json", bytes.NewReader(body))
						if err != nil {
							b.Fatal(err)
						}
						io.Copy(io.Discard, resp.Body) // so the connection is reused
						resp.Body.Close()
					}
				}
			})
		})
	}
}
