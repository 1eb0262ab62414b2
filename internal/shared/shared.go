// Package shared hands a filter's long-lived parts (a Redis client, a
// clamd pool, in-memory rate counters) from one filter to its successor
// across a reload: each filter holding a part has a Ref to it, and the
// part is closed when the last Ref is released. Since a replaced pipeline
// keeps serving its open connections for a while, an old filter and its
// successor use the part together, and neither can close it under the
// other.
package shared

import "sync"

// Ref is one holder's hold on a part.
type Ref[T any] struct {
	p        *part[T]
	mu       sync.Mutex
	released bool
}

type part[T any] struct {
	v     T
	key   string
	close func(T) error
	mu    sync.Mutex
	refs  int
}

// New makes v a shared part; key names the settings it was made with (a
// successor takes it over only if its own settings give the same key);
// close, if not nil, runs when the last holder lets go.
func New[T any](v T, key string, close func(T) error) *Ref[T] {
	return &Ref[T]{p: &part[T]{v: v, key: key, close: close, refs: 1}}
}

// Value is the part.
func (r *Ref[T]) Value() T { return r.p.v }

// Key is the settings the part was made with.
func (r *Ref[T]) Key() string { return r.p.key }

// Share returns a new holder's Ref to the same part. The receiver must
// not be released yet.
func (r *Ref[T]) Share() *Ref[T] {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	if r.p.refs == 0 {
		panic("shared: Share of a part already closed")
	}
	r.p.refs++
	return &Ref[T]{p: r.p}
}

// TakeOver returns a Ref to old's part if old is not nil and was made
// with key; else nil, and the caller makes a part of its own.
func TakeOver[T any](old *Ref[T], key string) *Ref[T] {
	if old == nil || old.Key() != key {
		return nil
	}
	return old.Share()
}

// Release lets go of the part; the last holder closes it and gets close's
// error. Releasing a Ref twice releases it once.
func (r *Ref[T]) Release() error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	already := r.released
	r.released = true
	r.mu.Unlock()
	if already {
		return nil
	}
	r.p.mu.Lock()
	r.p.refs--
	last := r.p.refs == 0
	r.p.mu.Unlock()
	if last && r.p.close != nil {
		return r.p.close(r.p.v)
	}
	return nil
}

// Holders is how many holders the part has (for tests and the log).
func (r *Ref[T]) Holders() int {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	return r.p.refs
}
