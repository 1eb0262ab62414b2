// Package ratecount counts events per key in sliding windows, for rate
// limits, in memory (one host) or in Redis (several MX hosts share the
// counts), and counts concurrent holders per key.
//
// The window is a sliding-window counter: counts are kept per fixed
// window (one minute of a "1m" limit, say), and the count "in the last
// minute" is the current window's plus the previous window's weighted by
// how much of it still lies within the last minute. It needs two numbers
// per key, is exact when events are spread evenly, and counts at most the
// limit in each fixed window. It takes the previous window's events as
// spread evenly: when they bunched at its end, a window-long stretch
// across the two windows sees more than the limit, at worst twice it.
//
// A holder count (a concurrency limit) is a set of holders per key, not a
// number: each session adds its own name and removes it when it ends, so
// giving back twice, or giving back what a take that failed never counted,
// changes nothing. In Redis each holder also carries a lease that its
// host renews while the session is open, so a count whose release was lost
// (Redis stalled, the host died) ends within a lease of the session.
package ratecount

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"
)

// Op is one count of a Take.
type Op struct {
	Key   string
	N     int64 // events to count; 0 only looks
	Limit int64
	// Window is the rate's window; 0 makes the op a holder count (a
	// concurrency limit), given back with Release.
	Window time.Duration
	// Holder names who holds a holder count (one session, unique across
	// hosts); a holder is counted once however often it takes.
	Holder string
}

// ErrNoHolder is a holder count's op without a holder.
var ErrNoHolder = errors.New("ratecount: a holder count without a holder")

// Counter is a backend.
type Counter interface {
	// Take makes every op's count if each stays within its limit, and
	// none if one would not: then it reports that op's index and the
	// count it had. over is -1 when all were taken. All in one step (one
	// round trip to Redis).
	Take(ctx context.Context, ops []Op) (over int, count int64, err error)
	// Add counts n events for key whatever the limit.
	Add(ctx context.Context, key string, n int64, window time.Duration) error
	// Release gives back holder's count of key; giving back what was not
	// held does nothing.
	Release(ctx context.Context, key, holder string) error
}

// slot is the fixed window a moment falls in, and how far into it.
func slot(now time.Time, window time.Duration) (index int64, prevWeight float64) {
	ns := now.UnixNano()
	w := int64(window)
	index = ns / w
	elapsed := float64(ns%w) / float64(w)
	return index, 1 - elapsed
}

// Estimate is the sliding count from the current and previous windows.
func Estimate(cur, prev int64, prevWeight float64) int64 {
	return cur + int64(float64(prev)*prevWeight)
}

// Memory counts in this process.
type Memory struct {
	now     func() time.Time
	mu      sync.Mutex
	windows map[string]*windowCount
	holders map[string]map[string]struct{}
	ops     int
}

type windowCount struct {
	index     int64
	cur, prev int64
	window    time.Duration
}

// NewMemory returns an in-memory counter; now is the clock (nil: time.Now).
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{now: now, windows: map[string]*windowCount{}, holders: map[string]map[string]struct{}{}}
}

// sweepEvery is how many operations pass between sweeps of keys whose
// windows are over, so the map does not grow with every client ever seen.
const sweepEvery = 4096

func (m *Memory) get(key string, window time.Duration, now time.Time) (*windowCount, float64) {
	index, weight := slot(now, window)
	m.ops++
	if m.ops%sweepEvery == 0 {
		for k, w := range m.windows {
			if i, _ := slot(now, w.window); i > w.index+1 {
				delete(m.windows, k)
			}
		}
	}
	w := m.windows[key]
	if w == nil || w.window != window {
		// A rule whose window changed (a reload) starts its count again:
		// counts per window of another length do not add up.
		w = &windowCount{index: index, window: window}
		m.windows[key] = w
	}
	switch {
	case index == w.index+1:
		w.prev, w.cur, w.index = w.cur, 0, index
	case index > w.index+1:
		w.prev, w.cur, w.index = 0, 0, index
	}
	return w, weight
}

func (m *Memory) Take(_ context.Context, ops []Op) (int, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for i, op := range ops {
		var count int64
		if op.Window == 0 {
			if op.Holder == "" {
				return -1, 0, ErrNoHolder
			}
			count = int64(len(m.holders[op.Key]))
			if _, ok := m.holders[op.Key][op.Holder]; ok {
				count-- // taking again counts it once
			}
		} else {
			w, weight := m.get(op.Key, op.Window, now)
			count = Estimate(w.cur, w.prev, weight)
		}
		if count+op.N > op.Limit {
			return i, count, nil
		}
	}
	for _, op := range ops {
		if op.Window == 0 {
			if op.N > 0 {
				if m.holders[op.Key] == nil {
					m.holders[op.Key] = map[string]struct{}{}
				}
				m.holders[op.Key][op.Holder] = struct{}{}
			}
		} else {
			w, _ := m.get(op.Key, op.Window, now)
			w.cur += op.N
		}
	}
	return -1, 0, nil
}

func (m *Memory) Add(_ context.Context, key string, n int64, window time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	w, _ := m.get(key, window, m.now())
	w.cur += n
	return nil
}

func (m *Memory) Release(_ context.Context, key, holder string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.holders[key], holder)
	if len(m.holders[key]) == 0 {
		delete(m.holders, key)
	}
	return nil
}

// windowKey names a key's count in one fixed window.
func windowKey(prefix, key string, index int64) string {
	return prefix + key + ":" + strconv.FormatInt(index, 10)
}
