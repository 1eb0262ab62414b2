// Package stats counts what the pipeline sees and decides, for the periodic
// summary log line: messages since the last summary, what became of them,
// and hits per filter and reason.
package stats

import (
	"log/slog"
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
	verdicts map[string]uint64
}

// NewCounter returns an empty counter.
func NewCounter() *Counter {
	return &Counter{hits: map[string]uint64{}, verdicts: map[string]uint64{}}
}

// Message counts one message seen.
func (c *Counter) Message() { c.messages.Add(1) }

// Pending is the number of messages counted since the last Take.
func (c *Counter) Pending() uint64 { return c.messages.Load() }

// Hit counts one event, keyed "filter:reason" (e.g. "virus:WORM_SOBIG.B").
// The reason must be a stable name (a signature, a rule, a class such as
// "timeout"), never text with numbers in it.
func (c *Counter) Hit(filter, reason string) { c.add(&c.hits, filter, reason) }

// Verdict counts what became of one message: "accepted", "aborted", or
// an action ("rejected", "tempfailed", "discarded") and the filter that
// decided it.
func (c *Counter) Verdict(outcome, filter string) { c.add(&c.verdicts, outcome, filter) }

// add counts one under "outer:inner", or "outer" when inner is "". The
// map is looked up under the lock: Take replaces it.
func (c *Counter) add(counts *map[string]uint64, outer, inner string) {
	key := outer
	if inner != "" {
		key += ":" + inner
	}
	c.mu.Lock()
	(*counts)[key]++
	c.mu.Unlock()
}

// Summary is the counts since the previous Take.
type Summary struct {
	Messages uint64
	Hits     map[string]uint64 // "filter:reason" -> count
	Verdicts map[string]uint64 // "accepted", "rejected:virus" -> count
}

// Take returns the counts so far and resets them.
func (c *Counter) Take() Summary {
	c.mu.Lock()
	hits, verdicts := c.hits, c.verdicts
	c.hits, c.verdicts = map[string]uint64{}, map[string]uint64{}
	c.mu.Unlock()
	return Summary{Messages: c.messages.Swap(0), Hits: hits, Verdicts: verdicts}
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

// Attrs is the summary as log attributes, nested so that JSON lines carry
// objects: messages, verdicts (accepted, and per outcome the filters that
// decided), hits (per filter, per reason). In text lines the nesting
// reads "verdicts.rejected.virus=3 hits.virus.WORM_SOBIG.B=3".
func (s Summary) Attrs() []any {
	return []any{"messages", s.Messages, nested("verdicts", s.Verdicts), nested("hits", s.Hits)}
}

// nested groups "a:b" keys as a.b.
func nested(name string, counts map[string]uint64) slog.Attr {
	groups := map[string][]any{}
	var flat []any
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		outer, inner, ok := strings.Cut(k, ":")
		if !ok {
			flat = append(flat, slog.Uint64(k, counts[k]))
			continue
		}
		groups[outer] = append(groups[outer], slog.Uint64(inner, counts[k]))
	}
	for _, g := range slices.Sorted(maps.Keys(groups)) {
		flat = append(flat, slog.Group(g, groups[g]...))
	}
	return slog.Group(name, flat...)
}
