package maildir

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"sync"
	"time"

	"mailguard/internal/safefile"
)

// Usage is what a quota decision needs about one mailbox.
type Usage struct {
	Totals
	Def      Definition // from maildirsize; Def.Set false when it has none
	FromScan bool       // totals counted from the messages, not maildirsize
}

// Maildir++ recalculates a maildirsize that shows the quota exceeded and
// is older than this, since clients may have removed mail without
// updating it.
const staleAge = 15 * time.Minute

// UsageReader reads mailbox usage cheaply: maildirsize is re-read only
// when its size or mtime changed, and counting the messages (when
// maildirsize is missing, broken or stale) runs in the background, bounded
// in number, so one slow mailbox never stalls other recipients.
type UsageReader struct {
	// Wait is how long Usage waits for a count in progress; 0 means 100ms.
	Wait time.Duration
	// Recount is how long a count stays good; 0 means 1 minute.
	Recount time.Duration
	// CountTimeout bounds one count; 0 means 30 seconds.
	CountTimeout time.Duration
	// MaxEntries bounds the directory entries one count reads; 0 means
	// DefaultMaxEntries.
	MaxEntries int64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// OnError, if set, hears of each count that failed (a Maildir that
	// cannot be read): its recipients then go unchecked.
	OnError func(maildir string, err error)

	mu      sync.Mutex
	entries map[string]*entry
	slots   chan struct{} // bounds concurrent counts
	once    sync.Once
}

type entry struct {
	// what maildirsize said, and the file's identity then
	fileSize  int64
	fileMtime time.Time
	fileOK    bool
	usage     Usage

	// the latest count of the messages
	counted   Totals
	countedAt time.Time
	counting  chan struct{} // closed when the count in progress ends
	countErr  error
}

func (r *UsageReader) init() {
	r.once.Do(func() {
		r.entries = map[string]*entry{}
		r.slots = make(chan struct{}, 4)
		if r.Wait == 0 {
			r.Wait = 100 * time.Millisecond
		}
		if r.Recount == 0 {
			r.Recount = time.Minute
		}
		if r.CountTimeout == 0 {
			r.CountTimeout = 30 * time.Second
		}
		if r.Now == nil {
			r.Now = time.Now
		}
		if r.MaxEntries == 0 {
			r.MaxEntries = DefaultMaxEntries
		}
	})
}

// Usage returns the mailbox's usage. ok is false when it cannot be known
// in time (a count still running, or failing): the caller must then not
// refuse mail for quota.
func (r *UsageReader) Usage(maildir string) (Usage, bool) {
	r.init()
	path := filepath.Join(maildir, "maildirsize")
	// Lstat: the user owns the Maildir and may put a link or a FIFO here.
	// The cheap path compares the file's identity with the cache; any
	// read goes through safefile, which checks the open descriptor again.
	fi, statErr := os.Lstat(path)

	r.mu.Lock()
	e := r.entries[maildir]
	if e == nil {
		e = &entry{}
		r.entries[maildir] = e
	}
	if statErr == nil && e.fileOK && e.fileSize == fi.Size() && e.fileMtime.Equal(fi.ModTime()) {
		u := e.usage
		r.mu.Unlock()
		return u, true
	}
	r.mu.Unlock()

	var def Definition
	if statErr == nil && fi.Mode().IsRegular() {
		if fi.Size() < StaleSize {
			if u, ok := r.readFile(path, fi); ok {
				r.mu.Lock()
				e.fileOK, e.fileSize, e.fileMtime, e.usage = true, fi.Size(), fi.ModTime(), u
				r.mu.Unlock()
				return u, true
			}
		}
		def = firstLineDefinition(path)
	}
	return r.countUsage(maildir, e, def)
}

// readFile parses maildirsize; false means count the messages instead.
// The file is opened without blocking and checked on its descriptor: a
// user may swap it for a FIFO between the Lstat and the open.
func (r *UsageReader) readFile(path string, _ os.FileInfo) (Usage, bool) {
	f, fi, err := safefile.Open(path, safefile.Options{NoFollow: true, MaxSize: StaleSize - 1})
	if err != nil {
		return Usage{}, false
	}
	defer f.Close()
	def, totals, err := ParseMaildirsize(f)
	if err != nil {
		return Usage{}, false
	}
	if def.Over(totals) && r.Now().Sub(fi.ModTime()) > staleAge {
		return Usage{}, false
	}
	return Usage{Totals: totals, Def: def}, true
}

// firstLineDefinition keeps a broken or oversized file's quota definition
// when its first line is sound.
func firstLineDefinition(path string) Definition {
	f, _, err := safefile.Open(path, safefile.Options{NoFollow: true})
	if err != nil {
		return Definition{}
	}
	defer f.Close()
	line, _ := bufio.NewReaderSize(f, 256).ReadSlice('\n')
	def, err := ParseDefinition(string(line))
	if err != nil {
		return Definition{}
	}
	return def
}

func (r *UsageReader) countUsage(maildir string, e *entry, def Definition) (Usage, bool) {
	r.mu.Lock()
	e.fileOK = false
	if e.counting == nil && (e.countedAt.IsZero() || r.Now().Sub(e.countedAt) > r.Recount) {
		e.counting = make(chan struct{})
		go r.count(maildir, e)
	}
	done := e.counting
	r.mu.Unlock()

	if done != nil {
		t := time.NewTimer(r.Wait)
		select {
		case <-done:
		case <-t.C:
		}
		t.Stop()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.countedAt.IsZero() || e.countErr != nil {
		return Usage{}, false
	}
	return Usage{Totals: e.counted, Def: def, FromScan: true}, true
}

func (r *UsageReader) count(maildir string, e *entry) {
	r.slots <- struct{}{}
	ctx, cancel := context.WithTimeout(context.Background(), r.CountTimeout)
	t, err := CountLimit(ctx, maildir, r.MaxEntries)
	cancel()
	<-r.slots
	if err != nil && r.OnError != nil {
		r.OnError(maildir, err) // before anyone waiting on the count goes on
	}
	r.mu.Lock()
	e.counted, e.countErr, e.countedAt = t, err, r.Now()
	close(e.counting)
	e.counting = nil
	r.mu.Unlock()
}
