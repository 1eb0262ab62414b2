// Package doortest serves a pipeline through the milter door on a
// loopback port, for tests that drive it as an MTA would.
package doortest

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"mailguard/internal/milterdoor"
	"mailguard/internal/pipeline"
)

// Serve serves p through a door with opts on a loopback TCP port until
// the test ends (the door is shut down then; p stays the caller's), and
// returns the door and its address, host:port.
func Serve(t testing.TB, p *pipeline.Pipeline, opts milterdoor.Options) (*milterdoor.Door, string) {
	t.Helper()
	door := milterdoor.New(p, slog.New(slog.DiscardHandler), opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go door.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		door.Shutdown(ctx)
	})
	return door, ln.Addr().String()
}
