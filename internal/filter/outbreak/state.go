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
	owner  *Filter // the filter whose store it serves
	prev   *Filter // the one before, until it is closed
	store  Store
}

func (c *control) current() Store {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.store
}

// serve points the control socket at the store of owner, the filter a
// build made last, and remembers the one it served until now.
func (c *control) serve(owner *Filter, s Store) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.prev, c.owner, c.store = c.owner, owner, s
}

// closing is told that f is being closed. If the socket serves f (a
// reload built it and then failed), it serves the previous filter's
// store again: the running filter's holds must stay reachable. If f is
// that previous filter (a reload that succeeded retires it), it is
// forgotten.
func (c *control) closing(f *Filter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch f {
	case c.owner:
		if c.prev != nil {
			c.owner, c.store = c.prev, c.prev.opts.Store
		}
		c.prev = nil
	case c.prev:
		c.prev = nil
	}
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
