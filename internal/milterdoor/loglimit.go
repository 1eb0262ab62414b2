package milterdoor

import (
	"log/slog"
	"sync"
	"time"
)

// logLimiter lets one kind of warning through at most once per interval
// and counts the ones it held back, so a flood of bad connections costs a
// line a minute, not a line each.
type logLimiter struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

const logInterval = time.Minute

func (l *logLimiter) log(log *slog.Logger, msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < logInterval {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "similar_since_last", n)
	}
	log.Warn(msg, args...)
}
