package metrics

import (
	"fmt"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// Minutes land in their buckets, old ones fall out after a day, and the
// series sums them into wider buckets, the last holding the current minute.
func TestActivitySeries(t *testing.T) {
	c := &clock{t: time.Date(2026, 11, 29, 10, 0, 30, 0, time.UTC)}
	a := NewActivity(c.now)
	a.message()
	a.decision(Decision{Key: "virus:W"})
	c.t = c.t.Add(10 * time.Minute)
	a.message()
	a.message()
	a.decision(Decision{Key: "virus:W"})
	a.decision(Decision{Key: "access:deny"})

	hour := a.Series(60, time.Minute)
	if len(hour) != 60 || hour[59].Messages != 2 || hour[49].Messages != 1 || hour[48].Messages != 0 {
		t.Fatalf("hour: last %+v, 10 minutes before %+v", hour[59], hour[49])
	}
	if hour[59].Refusals["virus:W"] != 1 || hour[59].Refusals["access:deny"] != 1 || hour[49].Refusals["virus:W"] != 1 {
		t.Fatalf("refusals: %v %v", hour[59].Refusals, hour[49].Refusals)
	}
	keys, totals := TopReasons(hour, 5)
	if len(keys) != 2 || keys[0] != "virus:W" || totals["virus:W"] != 2 {
		t.Fatalf("top reasons %v %v", keys, totals)
	}
	day := a.Series(96, 15*time.Minute)
	var sum uint64
	for _, b := range day {
		sum += b.Messages
	}
	if sum != 3 {
		t.Fatalf("day holds %d messages, want 3", sum)
	}
	// A day later the slots are reused: the old minutes are gone.
	c.t = c.t.Add(24 * time.Hour)
	a.message()
	hour = a.Series(60, time.Minute)
	if hour[59].Messages != 1 || hour[49].Messages != 0 || len(hour[59].Refusals) != 0 {
		t.Fatalf("a day later: %+v, %+v", hour[59], hour[49])
	}
}

// A flood of distinct reasons in one minute is bounded; the rest count as
// "other".
func TestActivityReasonsBounded(t *testing.T) {
	c := &clock{t: time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)}
	a := NewActivity(c.now)
	for i := range 1000 {
		a.decision(Decision{Key: fmt.Sprint("r", i)})
	}
	last := a.Series(1, time.Minute)[0]
	if len(last.Refusals) != maxReasonsPerMinute+1 || last.Refusals["other"] != 1000-maxReasonsPerMinute {
		t.Fatalf("%d reasons, other %d", len(last.Refusals), last.Refusals["other"])
	}
}

// The recent decisions are the latest, newest first, bounded.
func TestActivityRecent(t *testing.T) {
	a := NewActivity(nil)
	for i := range recentKept + 7 {
		a.decision(Decision{From: fmt.Sprint(i)})
	}
	r := a.Recent()
	if len(r) != recentKept || r[0].From != fmt.Sprint(recentKept+6) || r[recentKept-1].From != "7" {
		t.Fatalf("%d decisions, first %q, last %q", len(r), r[0].From, r[len(r)-1].From)
	}
}
