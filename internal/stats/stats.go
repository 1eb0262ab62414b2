// Package stats counts what the pipeline sees and decides, for the periodic
// summary log line: messages since the last summary and hits per reason.
package stats

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Counter is safe for concurrent use. It survives configuration reloads.
type Counter struct {
	messages atomic.Uint64
	mu       sync.Mutex
	hits     map[string]uint64
}

// NewCounter returns an empty counter.
func NewCounter() *Counter { return &Counter{hits: map[string]uint64{}} }

// Message counts one message seen.
func (c *Counter) Message() { c.messages.Add(1) }

// Pending is the number of messages counted since the last Take.
func (c *Counter) Pending() uint64 { return c.messages.Load() }

// Hit counts one decision, keyed "filter:reason" (e.g. "virus:WORM_SOBIG.B").
func (c *Counter) Hit(filter, reason string) {
	key := filter
	if reason != "" {
		key += ":" + reason
	}
	c.mu.Lock()
	c.hits[key]++
	c.mu.Unlock()
}

// Summary is the counts since the previous Take.
type Summary struct {
	Messages uint64
	Hits     map[string]uint64
}

// Take returns the counts so far and resets them.
func (c *Counter) Take() Summary {
	c.mu.Lock()
	hits := c.hits
	c.hits = map[string]uint64{}
	c.mu.Unlock()
	return Summary{Messages: c.messages.Swap(0), Hits: hits}
}

// HitsString renders hits as "a=1 b=2", sorted by key.
func (s Summary) HitsString() string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(s.Hits)) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(strconv.FormatUint(s.Hits[k], 10))
	}
	return b.String()
}
