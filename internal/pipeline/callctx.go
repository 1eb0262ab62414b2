package pipeline

import (
	"context"
	"sync"
	"time"
)

// lazyCtx is the context.Context the pipeline gives filters: for each
// call (with the filter's timeout as deadline), each message and each
// connection. It costs nothing until a filter asks for Done: no channel,
// no timer and no goroutine for the filters that never wait (the
// signature matcher, a Maildir copy), which is nearly every call.
// context.WithTimeout would cost about 1 µs and four allocations per call,
// several times per message on the hot path (measured in
// BenchmarkCallContext); this costs one small allocation.
//
// Err is checked lazily against the parent and the deadline, so a filter
// polling Err sees a timeout even if it never called Done.
type lazyCtx struct {
	parent   context.Context
	deadline time.Time // zero: none of its own

	mu     sync.Mutex
	done   chan struct{} // made on the first Done
	err    error
	armed  []func() bool // stops the watches on parent and deadline
	afters map[int]func()
	nextID int
}

func newLazyCtx(parent context.Context, deadline time.Time) *lazyCtx {
	return &lazyCtx{parent: parent, deadline: deadline}
}

func (c *lazyCtx) Deadline() (time.Time, bool) {
	d, ok := c.parent.Deadline()
	if !c.deadline.IsZero() && (!ok || c.deadline.Before(d)) {
		return c.deadline, true
	}
	return d, ok
}

func (c *lazyCtx) Value(key any) any { return c.parent.Value(key) }

func (c *lazyCtx) Err() error {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if err := c.parent.Err(); err != nil {
		c.cancel(err)
		return c.errNow()
	}
	if !c.deadline.IsZero() && !time.Now().Before(c.deadline) {
		c.cancel(context.DeadlineExceeded)
		return c.errNow()
	}
	return nil
}

func (c *lazyCtx) errNow() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *lazyCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.armLocked()
	return c.done
}

// armLocked makes the done channel and starts watching the parent and the
// deadline. c.mu is held.
func (c *lazyCtx) armLocked() {
	if c.done != nil {
		return
	}
	c.done = make(chan struct{})
	if c.err != nil {
		close(c.done)
		return
	}
	// context.AfterFunc runs f in its own goroutine even when the parent
	// is already done, so holding c.mu here cannot deadlock.
	c.armed = append(c.armed, context.AfterFunc(c.parent, func() { c.cancel(c.parent.Err()) }))
	if !c.deadline.IsZero() {
		t := time.AfterFunc(time.Until(c.deadline), func() { c.cancel(context.DeadlineExceeded) })
		c.armed = append(c.armed, t.Stop)
	}
}

// AfterFunc lets contexts derived from this one (context.WithTimeout,
// context.AfterFunc) follow it without a goroutine each.
func (c *lazyCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		go f()
		return func() bool { return false }
	}
	c.armLocked()
	if c.afters == nil {
		c.afters = map[int]func(){}
	}
	id := c.nextID
	c.nextID++
	c.afters[id] = f
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, ok := c.afters[id]
		delete(c.afters, id)
		return ok
	}
}

// cancel ends the context with err (the first cause wins).
func (c *lazyCtx) cancel(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	armed, afters := c.armed, c.afters
	c.armed, c.afters = nil, nil
	c.mu.Unlock()
	for _, stop := range armed {
		stop()
	}
	for _, f := range afters {
		go f()
	}
}

// timedOut reports whether the context ended at its own deadline.
func (c *lazyCtx) timedOut() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err == context.DeadlineExceeded
}
