package pipeline

import (
	"errors"
	"fmt"
	"sync/atomic"
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
// such as a milter connection that negotiated for it. One atomic word (a
// count and two flags) rather than a mutex: every SMTP session takes and
// gives back a use, on every core.
type lifecycle struct {
	state atomic.Int64
}

const (
	retiredFlag = int64(1) << 61
	closedFlag  = int64(1) << 62
	usersMask   = retiredFlag - 1
)

// use counts a user the caller knows the pipeline cannot lose meanwhile
// (it holds it, or owns it).
func (l *lifecycle) use() { l.state.Add(1) }

// Hold keeps the pipeline from being closed until Release. It reports
// false when the pipeline is closed already (it was retired and nothing
// used it): the caller then takes the current pipeline instead.
func (p *Pipeline) Hold() bool {
	for {
		s := p.life.state.Load()
		if s&closedFlag != 0 {
			return false
		}
		if p.life.state.CompareAndSwap(s, s+1) {
			return true
		}
	}
}

// Release ends a Hold (or a connection's use); the last user of a retired
// pipeline closes it.
func (p *Pipeline) Release() {
	if s := p.life.state.Add(-1); s == retiredFlag && p.life.state.CompareAndSwap(s, s|closedFlag) {
		p.closeFilters()
	}
}

// Retire says the pipeline will get no new users once those it has let
// go: a reload replaced it, or the daemon stops. Its filters are closed
// now if nothing uses it, else when its last user lets go. Retire is
// safe to call more than once.
func (p *Pipeline) Retire() {
	for {
		s := p.life.state.Load()
		if s&retiredFlag != 0 {
			return
		}
		if p.life.state.CompareAndSwap(s, s|retiredFlag) {
			if s&usersMask == 0 && p.life.state.CompareAndSwap(s|retiredFlag, s|retiredFlag|closedFlag) {
				p.closeFilters()
			}
			return
		}
	}
}

// Closed reports whether the pipeline's filters have been closed.
func (p *Pipeline) Closed() bool { return p.life.state.Load()&closedFlag != 0 }

// Close closes every filter that holds something, at once, whoever still
// uses the pipeline: for a pipeline that never served (a build that
// failed half-way, a scan's own). Its error joins the filters' errors.
func (p *Pipeline) Close() error {
	for {
		s := p.life.state.Load()
		if s&closedFlag != 0 {
			return nil
		}
		if p.life.state.CompareAndSwap(s, s|retiredFlag|closedFlag) {
			return p.closeFilters()
		}
	}
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
	if err != nil && p.env.Log != nil {
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
