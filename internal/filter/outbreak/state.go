package outbreak

import (
	"log/slog"
	"sync"

	"mailguard/internal/shared"
)

// What the filter keeps beyond one message, handed from a filter to its
// successor across a reload (package shared): the counts with the
// samples kept for them (a backendState, taken over when the settings it
// was made with are the same), and the control socket (taken over when
// the samples folder is the same; it then serves the successor's
// counts). The last holder closes each.
type backendState struct {
	store   Store
	samples *samples
}

func closeBackend(b *backendState) error { return b.store.Close() }

// control is the control socket and the store it serves, the newest
// filter's.
type control struct {
	server *controlServer // nil when the socket could not be opened
	mu     sync.Mutex
	store  Store
}

func (c *control) current() Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.store
}

func (c *control) serve(s Store) {
	c.mu.Lock()
	c.store = s
	c.mu.Unlock()
}

func closeControl(c *control) error {
	if c.server == nil {
		return nil
	}
	return c.server.Close()
}

// openControl opens the samples folder's control socket; a failure is
// logged (the filter works without it, `mailguard outbreak` cannot reach
// it).
func openControl(dir string, log *slog.Logger) *shared.Ref[*control] {
	c := &control{}
	srv, err := listenControl(ControlSocket(dir), c.current, log)
	if err != nil {
		log.Warn("outbreak: no control socket; `mailguard outbreak` cannot reach this process", "error", err.Error())
	}
	c.server = srv
	return shared.New(c, dir, closeControl)
}
