package metrics

import (
	"maps"
	"slices"
	"sync"
	"time"
)

// Decision is one decision as the status page lists it. Every string in
// it came from the SMTP client or the MTA: whoever shows it escapes it.
type Decision struct {
	Time    time.Time `json:"time"`
	Client  string    `json:"client"`
	From    string    `json:"from"`
	Rcpts   []string  `json:"rcpts"` // the first few; More counts the others
	More    int       `json:"more_rcpts,omitempty"`
	Verdict string    `json:"verdict"` // "accept", "reject 550 5.7.0 VIRUS FOUND", ...
	Filter  string    `json:"filter,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	// Key is the refusal's stable name ("virus:WORM_SOBIG.B"), "" for
	// an accepted message.
	Key string `json:"key,omitempty"`
}

// Activity keeps a day of minute buckets (messages, refusals by reason)
// and the most recent decisions, in memory bounded by its constants.
type Activity struct {
	now     func() time.Time
	mu      sync.Mutex
	minutes [minutesKept]minute
	recent  [recentKept]Decision
	next    int // where the next decision goes in recent
	kept    int // decisions in recent
}

const (
	minutesKept = 24 * 60
	recentKept  = 50
	// maxReasonsPerMinute bounds one minute's refusal keys: a flood of
	// distinct reasons lands in "other".
	maxReasonsPerMinute = 32
	// MaxRcpts bounds the recipients one decision keeps.
	MaxRcpts = 5
)

type minute struct {
	at       int64 // Unix minute; a stale slot holds an older one
	messages uint64
	refusals map[string]uint64
}

// NewActivity makes an empty record; now is the clock.
func NewActivity(now func() time.Time) *Activity {
	if now == nil {
		now = time.Now
	}
	return &Activity{now: now}
}

// slot returns the bucket of the current minute, emptied if it held an
// older one. The caller holds a.mu.
func (a *Activity) slot(t time.Time) *minute {
	at := t.Unix() / 60
	m := &a.minutes[at%minutesKept]
	if m.at != at {
		*m = minute{at: at}
	}
	return m
}

func (a *Activity) message() {
	t := a.now()
	a.mu.Lock()
	a.slot(t).messages++
	a.mu.Unlock()
}

// Decision records a decision (the pipeline does it through Core).
func (a *Activity) Decision(d Decision) { a.decision(d) }

func (a *Activity) decision(d Decision) {
	if d.Time.IsZero() {
		d.Time = a.now()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.recent[a.next] = d
	a.next = (a.next + 1) % recentKept
	a.kept = min(a.kept+1, recentKept)
	if d.Key == "" {
		return
	}
	m := a.slot(d.Time)
	if m.refusals == nil {
		m.refusals = map[string]uint64{}
	}
	key := d.Key
	if _, ok := m.refusals[key]; !ok && len(m.refusals) >= maxReasonsPerMinute {
		key = "other"
	}
	m.refusals[key]++
}

// Recent returns the kept decisions, newest first.
func (a *Activity) Recent() []Decision {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Decision, 0, a.kept)
	for i := 1; i <= a.kept; i++ {
		out = append(out, a.recent[(a.next-i+recentKept)%recentKept])
	}
	return out
}

// Bucket is the activity of one span of time.
type Bucket struct {
	Start    time.Time
	Messages uint64
	Refusals map[string]uint64
}

// Series returns n buckets of width each (a whole number of minutes),
// oldest first, the last one holding the current minute; at most a day.
func (a *Activity) Series(n int, width time.Duration) []Bucket {
	per := max(int64(width/time.Minute), 1)
	n = min(n, int(minutesKept/per))
	nowMin := a.now().Unix() / 60
	first := nowMin - int64(n)*per + 1
	out := make([]Bucket, n)
	for i := range out {
		out[i] = Bucket{Start: time.Unix((first+int64(i)*per)*60, 0), Refusals: map[string]uint64{}}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for at := first; at <= nowMin; at++ {
		m := &a.minutes[at%minutesKept]
		if m.at != at {
			continue
		}
		b := &out[(at-first)/per]
		b.Messages += m.messages
		for k, v := range m.refusals {
			b.Refusals[k] += v
		}
	}
	return out
}

// TopReasons returns the refusal keys of buckets by count, largest first,
// at most n, with their totals.
func TopReasons(buckets []Bucket, n int) ([]string, map[string]uint64) {
	totals := map[string]uint64{}
	for _, b := range buckets {
		for k, v := range b.Refusals {
			totals[k] += v
		}
	}
	keys := slices.SortedFunc(maps.Keys(totals), func(a, b string) int {
		if totals[a] != totals[b] {
			if totals[a] > totals[b] {
				return -1
			}
			return 1
		}
		if a < b {
			return -1
		}
		return 1
	})
	return keys[:min(n, len(keys))], totals
}
