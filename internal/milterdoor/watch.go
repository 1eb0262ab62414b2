package milterdoor

import (
	"sync"
	"sync/atomic"
	"time"

	"mailguard/internal/pipeline"
	"mailguard/internal/verdict"
)

const (
	// watchDelay is how long a stage may take before the door starts
	// watching the connection beside it.
	watchDelay = time.Second
	// progressInterval is how often the door tells the MTA to keep
	// waiting at the end of a message (SMFIR_PROGRESS), so a long scan
	// never runs into Postfix's milter_content_timeout (300 s) nor
	// Sendmail's E= timeout; the first goes out after a few seconds.
	progressInterval = 5 * time.Second
	// watchTicks is how many scans of the sessions fit in a watchDelay.
	watchTicks = 4
)

// progressPacket is SMFIR_PROGRESS: length 1, code 'p'.
var progressPacket = []byte{0, 0, 0, 1, replyProgress}

// watch looks after a stage whose answer the MTA is waiting for, once it
// has taken longer than the watch delay: the MTA sends nothing while it
// waits, so any byte or error on the connection means it gave up or hung
// up, and the filters' calls are cancelled; at the end of a message it
// also sends progress replies. It owns the connection's reads and writes
// until the stage ends.
//
// Nearly every stage takes microseconds, so entering and leaving one costs
// two atomic stores and an uncontended lock: no timer per stage or per
// connection. One goroutine per door (watcher) scans the sessions a few
// times per watch delay and starts the watch of a stage that has run for
// too long.
type watch struct {
	// epoch is the door's scan count when the current stage began; 0
	// when no stage is running.
	epoch atomic.Int64
	mu    sync.Mutex
	eom   bool
	// noReply marks a stage the MTA does not wait for (negotiated without
	// a reply): it goes on sending, so bytes say nothing, and the watch
	// looks only for a hang-up (peerHungUp), without reading.
	noReply, hungUp bool
	cn              *pipeline.Connection
	msg             *pipeline.Message // the message of the stage, if any
	quit            chan struct{}     // non-nil while a watch runs; closed to end it
	wg              sync.WaitGroup
}

// guarded runs stage under the watch.
func (s *session) guarded(eom bool, stage func() verdict.Verdict) verdict.Verdict {
	w := &s.watch
	w.mu.Lock()
	w.eom, w.noReply, w.hungUp, w.cn, w.msg = eom, false, false, s.cn, s.msg
	w.mu.Unlock()
	w.epoch.Store(s.door.epoch.Load())
	v := stage()
	s.stopWatch()
	return v
}

// stopWatch ends the stage's watch, if one runs, and waits for it.
func (s *session) stopWatch() {
	w := &s.watch
	w.epoch.Store(0)
	w.mu.Lock()
	quit := w.quit
	if quit != nil {
		close(quit)
		w.quit = nil
	}
	w.mu.Unlock()
	if quit != nil {
		s.w.conn.SetReadDeadline(time.Now()) // wakes the watch's read
		w.wg.Wait()
		s.w.deadlineSet = time.Time{} // the next read sets the idle deadline again
	}
}

// unanswered runs a stage the MTA does not wait for under the watch: a
// filter waiting there (for a clamd slot, say) learns of the MTA hanging
// up, rather than holding the connection until its own timeout.
func (s *session) unanswered(stage func() verdict.Verdict) {
	w := &s.watch
	w.mu.Lock()
	w.eom, w.noReply, w.hungUp, w.cn, w.msg = false, true, false, s.cn, s.msg
	w.mu.Unlock()
	w.epoch.Store(s.door.epoch.Load())
	stage()
	w.epoch.Store(0)
}

// watcher scans the sessions until the door closes.
func (d *Door) watcher() {
	tick := time.NewTicker(d.opts.WatchDelay / watchTicks)
	defer tick.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-tick.C:
		}
		now := d.epoch.Add(1)
		d.mu.Lock()
		for s := range d.sessions {
			if e := s.watch.epoch.Load(); e != 0 && now-e >= watchTicks {
				s.startWatch()
			}
		}
		d.mu.Unlock()
	}
}

// startWatch starts watching the stage running now, unless it has ended
// or is watched already.
func (s *session) startWatch() {
	w := &s.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.quit != nil || w.epoch.Load() == 0 {
		return
	}
	if w.noReply {
		if !w.hungUp && peerHungUp(s.w.conn) {
			w.hungUp = true
			if w.cn != nil {
				w.cn.Cancel()
			} else if w.msg != nil {
				w.msg.Cancel()
			}
			s.door.log.Info("MTA hung up; filter calls cancelled", "client", pipeline.LogField(s.conn.Addr))
		}
		return
	}
	// The MTA waits for our answer: the connection is busy, not idle,
	// so the watch's read waits without the idle deadline (a filter may
	// take longer than idle_timeout) until a byte comes or guarded wakes
	// it. Set here, under w.mu, so it cannot undo guarded's wake-up.
	s.w.conn.SetReadDeadline(time.Time{})
	w.quit = make(chan struct{})
	w.wg.Add(1)
	go s.runWatch(w.quit, w.eom, w.cn, w.msg)
}

func (s *session) runWatch(quit chan struct{}, eom bool, cn *pipeline.Connection, msg *pipeline.Message) {
	defer s.watch.wg.Done()
	gone := make(chan error, 1)
	go func() {
		// The stage's packet is done with: drop it, then wait for a byte.
		s.w.r += s.w.consumed
		s.w.consumed = 0
		if s.w.r == s.w.w && s.w.r == len(s.w.buf) {
			s.w.r, s.w.w = 0, 0
		}
		gone <- s.w.fill(1)
	}()
	var tick <-chan time.Time
	if eom {
		t := time.NewTicker(s.door.opts.ProgressInterval)
		defer t.Stop()
		tick = t.C
		s.w.conn.SetWriteDeadline(time.Now().Add(s.w.idle))
		// The session's own writes wait without a deadline set unless
		// they set one: none may be left behind to expire.
		defer s.w.conn.SetWriteDeadline(time.Time{})
	}
	for {
		if s.door.beforeWatchSelect != nil {
			s.door.beforeWatchSelect(quit, gone)
		}
		select {
		case <-quit:
			if gone != nil {
				<-gone
			}
			return
		case err := <-gone:
			gone = nil
			// The stage may have ended meanwhile: guarded closes quit, then
			// wakes the read with a deadline, so a read error that comes
			// with quit closed is ours, and select picks among ready cases
			// at random. Only a read that ended with the stage still
			// running says anything about the MTA.
			select {
			case <-quit:
				return
			default:
			}
			// A hang-up ends the connection's calls; a command before our
			// answer (an abort) ends the message's, and the connection's
			// next messages still get theirs.
			cause := "the MTA sent a command before our answer"
			switch {
			case err != nil:
				cause = err.Error()
				if cn != nil {
					cn.Cancel()
				}
			case msg != nil:
				msg.Cancel()
			case cn != nil:
				cn.Cancel()
			}
			s.door.log.Info("MTA gave up waiting; filter calls cancelled", "client", pipeline.LogField(s.conn.Addr), "cause", cause)
		case <-tick:
			if _, err := s.w.conn.Write(progressPacket); err != nil {
				tick = nil
			}
		}
	}
}
