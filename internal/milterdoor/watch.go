package milterdoor

import (
	"sync"
	"time"

	"mailguard/internal/pipeline"
	"mailguard/internal/verdict"
)

const (
	// watchDelay is how long a stage may take before the door starts
	// watching the connection beside it. Nearly every stage takes
	// microseconds, so the watch is one timer reset and stop per stage.
	watchDelay = time.Second
	// progressInterval is how often the door tells the MTA to keep
	// waiting at the end of a message (SMFIR_PROGRESS), so a long scan
	// never runs into Postfix's milter_content_timeout (300 s) nor
	// Sendmail's E= timeout; the first goes out after a few seconds.
	progressInterval = 5 * time.Second
)

// progressPacket is SMFIR_PROGRESS: length 1, code 'p'.
var progressPacket = []byte{0, 0, 0, 1, replyProgress}

// watch looks after a stage whose answer the MTA is waiting for, once it
// takes longer than watchDelay: the MTA sends nothing while it waits, so
// any byte or error on the connection means it gave up or hung up, and
// the filters' calls are cancelled; at the end of a message it also sends
// progress replies. It runs in the timer's goroutine and owns the
// connection's reads and writes until the stage ends.
type watch struct {
	timer *time.Timer
	wg    sync.WaitGroup
	mu    sync.Mutex
	quit  chan struct{} // made when the watch starts; closed to end it
	ended bool          // the stage ended: do not start
	eom   bool
	s     *session
	cn    *pipeline.Connection
}

// guarded runs stage under the watch.
func (s *session) guarded(eom bool, stage func() verdict.Verdict) verdict.Verdict {
	w := &s.watch
	w.mu.Lock()
	w.s, w.eom, w.ended, w.cn = s, eom, false, s.cn
	w.mu.Unlock()
	w.wg.Add(1)
	if w.timer == nil {
		w.timer = time.AfterFunc(s.door.opts.WatchDelay, w.run)
	} else {
		w.timer.Reset(s.door.opts.WatchDelay)
	}
	v := stage()
	if w.timer.Stop() {
		w.wg.Done() // never started
		return v
	}
	w.mu.Lock()
	w.ended = true
	if w.quit != nil {
		close(w.quit)
	}
	w.mu.Unlock()
	s.w.conn.SetReadDeadline(time.Now()) // wakes the watch's read
	w.wg.Wait()
	w.mu.Lock()
	w.quit = nil
	w.mu.Unlock()
	s.w.deadlineSet = time.Time{} // the next read sets the idle deadline again
	return v
}

func (w *watch) run() {
	defer w.wg.Done()
	w.mu.Lock()
	if w.ended {
		w.mu.Unlock()
		return
	}
	quit := make(chan struct{})
	w.quit = quit
	s, eom, cn := w.s, w.eom, w.cn
	w.mu.Unlock()

	gone := make(chan error, 1)
	go func() {
		// The stage's packet is done with: drop it, then wait for a byte.
		if s.w.consumed > 0 {
			s.w.r.Discard(s.w.consumed)
			s.w.consumed = 0
		}
		_, err := s.w.r.Peek(1)
		gone <- err
	}()
	var tick <-chan time.Time
	if eom {
		t := time.NewTicker(s.door.opts.ProgressInterval)
		defer t.Stop()
		tick = t.C
		s.w.conn.SetWriteDeadline(time.Now().Add(s.w.idle))
	}
	for {
		select {
		case <-quit:
			if gone != nil {
				<-gone
			}
			return
		case err := <-gone:
			gone = nil
			cause := "the MTA sent a command before our answer"
			if err != nil {
				cause = err.Error()
			}
			s.door.log.Info("MTA gave up waiting; filter calls cancelled", "client", s.conn.Addr, "cause", cause)
			if cn != nil {
				cn.Cancel()
			}
		case <-tick:
			if _, err := s.w.conn.Write(progressPacket); err != nil {
				tick = nil
			}
		}
	}
}
