package pipeline

import (
	"errors"
	"fmt"
	"sync"
)

// Closer is implemented by filters that hold something beyond one
// message: a connection pool, a client, a goroutine, a cache. A pipeline
// closes its filters once it has been retired (a reload replaced it) and
// the last connection and holder using it has let go, so a filter's
// long-lived parts are freed exactly once and never under a message in
// flight. A closed filter still answers Name, Stages and Summary.
//
// This is maddy's io.Closer module and coredns's OnShutdown. A filter
// that wants its predecessor's parts (OnRestart in coredns) takes them
// when it is built: see filters.Env.Predecessor.
type Closer interface {
	Close() error
}

// lifecycle counts what uses a pipeline: its connections, and holders
// such as a milter connection that negotiated for it.
type lifecycle struct {
	mu      sync.Mutex
	users   int
	retired bool
	closed  bool
}

// Hold keeps the pipeline from being closed until Release. It reports
// false when the pipeline is closed already (it was retired and nothing
// used it): the caller then takes the current pipeline instead.
func (p *Pipeline) Hold() bool {
	p.life.mu.Lock()
	defer p.life.mu.Unlock()
	if p.life.closed {
		return false
	}
	p.life.users++
	return true
}

// Release ends a Hold (or a connection's use); the last user of a retired
// pipeline closes it.
func (p *Pipeline) Release() {
	p.life.mu.Lock()
	p.life.users--
	last := p.life.users == 0 && p.life.retired && !p.life.closed
	if last {
		p.life.closed = true
	}
	p.life.mu.Unlock()
	if last {
		p.closeFilters()
	}
}

// Retire says the pipeline will get no new users once those it has let
// go: a reload replaced it, or the daemon stops. Its filters are closed
// now if nothing uses it, else when its last user lets go. Retire is
// safe to call more than once.
func (p *Pipeline) Retire() {
	p.life.mu.Lock()
	now := !p.life.retired && p.life.users == 0 && !p.life.closed
	p.life.retired = true
	if now {
		p.life.closed = true
	}
	p.life.mu.Unlock()
	if now {
		p.closeFilters()
	}
}

// Closed reports whether the pipeline's filters have been closed.
func (p *Pipeline) Closed() bool {
	p.life.mu.Lock()
	defer p.life.mu.Unlock()
	return p.life.closed
}

// Close closes every filter that holds something, at once, whoever still
// uses the pipeline: for a pipeline that never served (a build that
// failed half-way, a scan's own). Its error joins the filters' errors.
func (p *Pipeline) Close() error {
	p.life.mu.Lock()
	already := p.life.closed
	p.life.closed, p.life.retired = true, true
	p.life.mu.Unlock()
	if already {
		return nil
	}
	return p.closeFilters()
}

// closeFilters closes the filters in reverse order, a panic in one being
// logged and the others closed all the same.
func (p *Pipeline) closeFilters() error {
	var errs []error
	for i := len(p.members) - 1; i >= 0; i-- {
		c, ok := p.members[i].Filter.(Closer)
		if !ok {
			continue
		}
		p.closeSafely(i, "closing", func() {
			if err := c.Close(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", p.members[i].Filter.Name(), err))
			}
		})
	}
	err := errors.Join(errs...)
	if err != nil {
		p.env.Log.Warn("closing a replaced pipeline's filters", "error", err.Error())
	}
	return err
}

// Filter returns the pipeline's filter called name, or nil: a new filter
// looks up its predecessor with it.
func (p *Pipeline) Filter(name string) Filter {
	if p == nil {
		return nil
	}
	for _, m := range p.members {
		if m.Filter.Name() == name {
			return m.Filter
		}
	}
	return nil
}
