package outbreak

import (
	"container/list"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"mailguard/internal/ownmaildir"
)

// samples keeps the first max_samples copies of each suspect fingerprint
// in the samples Maildir. The copies that arrive before a fingerprint is
// suspect are the ones most worth having (nothing held them up, their
// senders never retried), and nobody knows yet which fingerprint will
// turn suspect, so every message with a risky attachment is kept in
// memory for a window, within one budget of bytes shared by the messages
// still arriving and those kept: past it the oldest kept copies of keys
// seen from one network go first, then the oldest of any, and a message
// that does not fit is not kept (counted). A kept copy is written to the
// Maildir when its fingerprint turns suspect, else dropped after the
// window.
type samples struct {
	dir     string
	max     int
	budget  int64
	maxCopy int64
	window  time.Duration
	now     func() time.Time
	host    string
	seq     atomic.Uint64

	mu      sync.Mutex
	used    int64      // bytes of kept copies and of messages still arriving
	single  *list.List // kept copies whose keys were seen from one network, oldest first
	multi   *list.List // the others
	byKey   map[Key][]*list.Element
	written map[string]int // copies written per suspect record

	Written, Failed, NotKept atomic.Uint64

	pool sync.Pool // of *block
}

// blockSize is the unit copies are kept in: a copy grows by blocks from
// a pool, never by reallocation, and its blocks go back to the pool.
const blockSize = 32 << 10

type block [blockSize]byte

// rawCopy is a message as received, in blocks.
type rawCopy struct {
	blocks []*block
	last   int // bytes used in the last block
}

func (r *rawCopy) reserved() int64 { return int64(len(r.blocks)) * blockSize }

func (r *rawCopy) size() int64 {
	if len(r.blocks) == 0 {
		return 0
	}
	return int64(len(r.blocks)-1)*blockSize + int64(r.last)
}

// grow appends b to r within the budget; false when the message cannot be
// kept (r is then released).
func (s *samples) grow(r *rawCopy, b []byte) bool {
	for len(b) > 0 {
		if len(r.blocks) == 0 || r.last == blockSize {
			if !s.reserve(blockSize, r.reserved()) {
				s.release(r)
				return false
			}
			blk, _ := s.pool.Get().(*block)
			if blk == nil {
				blk = new(block)
			}
			r.blocks = append(r.blocks, blk)
			r.last = 0
		}
		n := copy(r.blocks[len(r.blocks)-1][r.last:], b)
		r.last += n
		b = b[n:]
	}
	return true
}

// release gives back r's bytes and its blocks.
func (s *samples) release(r *rawCopy) {
	if r == nil || len(r.blocks) == 0 {
		return
	}
	s.unreserve(r.reserved())
	for _, b := range r.blocks {
		s.pool.Put(b)
	}
	r.blocks, r.last = nil, 0
}

type keptCopy struct {
	raw  *rawCopy
	keys []Key
	at   time.Time
	in   *list.List
	done bool // written, or dropped
}

func newSamples(dir string, max int, budget, maxCopy int64, window time.Duration, now func() time.Time) *samples {
	host, _ := os.Hostname()
	return &samples{dir: dir, max: max, budget: budget, maxCopy: maxCopy, window: window, now: now, host: host,
		single: list.New(), multi: list.New(), byKey: map[Key][]*list.Element{}, written: map[string]int{}}
}

// reserve accounts for n more bytes of a message being kept (sofar
// already are), making room by dropping kept copies; false when the
// message cannot be kept. Bytes are counted by the block, so the budget
// bounds the memory itself.
func (s *samples) reserve(n int64, sofar int64) bool {
	if s.max == 0 || sofar+n > s.maxCopy {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.used+n > s.budget {
		if !s.evictOne() {
			return false
		}
	}
	s.used += n
	return true
}

// unreserve gives back the bytes of a message not kept.
func (s *samples) unreserve(n int64) {
	s.mu.Lock()
	s.used -= n
	s.mu.Unlock()
}

func (s *samples) evictOne() bool {
	for _, l := range []*list.List{s.single, s.multi} {
		if e := l.Front(); e != nil {
			s.dropAndRelease(e)
			return true
		}
	}
	return false
}

// drop removes a kept copy and returns its bytes (still reserved: the
// caller releases them, or writes them first).
func (s *samples) drop(e *list.Element) *rawCopy {
	c := e.Value.(*keptCopy)
	c.in.Remove(e)
	c.done = true
	raw := c.raw
	c.raw = nil
	for _, k := range c.keys {
		l := s.byKey[k]
		for i, x := range l {
			if x == e {
				l = append(l[:i:i], l[i+1:]...)
				break
			}
		}
		if len(l) == 0 {
			delete(s.byKey, k)
		} else {
			s.byKey[k] = l
		}
	}
	return raw
}

// dropAndRelease drops a kept copy and its bytes; s.mu is held.
func (s *samples) dropAndRelease(e *list.Element) {
	raw := s.drop(e)
	s.used -= raw.reserved()
	for _, b := range raw.blocks {
		s.pool.Put(b)
	}
}

// expire drops kept copies older than the window.
func (s *samples) expire(now time.Time) {
	for _, l := range []*list.List{s.single, s.multi} {
		for e := l.Front(); e != nil; e = l.Front() {
			if now.Sub(e.Value.(*keptCopy).at) <= s.window+s.window/slotsPerWindow {
				break
			}
			s.dropAndRelease(e)
		}
	}
}

// keep holds a copy of a message whose fingerprints are not suspect
// (yet). Its bytes were reserved; keep owns them from here on. A key
// that already has max_samples copies kept needs no more.
func (s *samples) keep(raw *rawCopy, keys []Key, multi bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(s.now())
	wanted := false
	for _, k := range keys {
		if len(s.byKey[k]) < s.max {
			wanted = true
		}
	}
	if !wanted {
		s.used -= raw.reserved()
		for _, b := range raw.blocks {
			s.pool.Put(b)
		}
		return
	}
	in := s.single
	if multi {
		in = s.multi
	}
	c := &keptCopy{raw: raw, keys: keys, at: s.now(), in: in}
	e := in.PushBack(c)
	for _, k := range keys {
		s.byKey[k] = append(s.byKey[k], e)
	}
}

// suspect writes the copies of a suspect fingerprint to the Maildir: the
// kept copies that share one of its keys (when it has just turned
// suspect), then this copy (raw may be nil: not kept), while fewer than
// max_samples were written for it. raw's reserved bytes are given back.
func (s *samples) suspect(id string, keys []Key, raw *rawCopy, header string, fresh bool) {
	s.mu.Lock()
	var batch, extra []*rawCopy
	if fresh {
		seen := map[*list.Element]bool{}
		var els []*list.Element
		for _, k := range keys {
			for _, e := range s.byKey[k] {
				if !seen[e] {
					seen[e] = true
					els = append(els, e)
				}
			}
		}
		for _, e := range els {
			kept := s.drop(e)
			if s.written[id]+len(batch) < s.max {
				batch = append(batch, kept)
			} else {
				extra = append(extra, kept)
			}
		}
	}
	if raw != nil && s.written[id]+len(batch) < s.max {
		batch = append(batch, raw)
	} else if raw != nil {
		extra = append(extra, raw)
	}
	s.written[id] += len(batch)
	s.mu.Unlock()
	for _, r := range batch {
		s.write(header, r)
	}
	for _, r := range append(batch, extra...) {
		s.release(r)
	}
}

// write puts one copy in the Maildir: created in tmp/, synced, moved to
// new/ under a name from the system; never rewritten.
func (s *samples) write(header string, raw *rawCopy) {
	err := s.writeFile(header, raw)
	if err != nil {
		s.Failed.Add(1)
		return
	}
	s.Written.Add(1)
}

func (s *samples) writeFile(header string, raw *rawCopy) error {
	now := s.now()
	name := ownmaildir.Name(now, s.seq.Add(1), s.host)
	tmpDir, err := ownmaildir.OpenDir(filepath.Join(s.dir, "tmp"))
	if err != nil {
		return err
	}
	defer syscall.Close(tmpDir)
	f, err := ownmaildir.CreateIn(tmpDir, name)
	if err != nil {
		return err
	}
	_, err = f.WriteString(header)
	for i, b := range raw.blocks {
		if err != nil {
			break
		}
		n := blockSize
		if i == len(raw.blocks)-1 {
			n = raw.last
		}
		_, err = f.Write(b[:n])
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = ownmaildir.Deliver(tmpDir, name, s.dir, int64(len(header))+raw.size())
	}
	if err != nil {
		syscall.Unlinkat(tmpDir, name)
	}
	return err
}

// Used is the bytes held now (kept copies and messages arriving).
func (s *samples) Used() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}
