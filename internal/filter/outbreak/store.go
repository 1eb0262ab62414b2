package outbreak

import (
	"context"
	"hash/maphash"
	"slices"
	"sync"
	"time"
)

// Store counts, per fingerprint, the distinct client networks and
// envelope senders in a sliding window, and keeps the holds, the releases
// and the suspect records. Memory (one host) or Redis (every MX host).
type Store interface {
	// Observe counts one copy's network and sender for each key and
	// reports each key's state, all in one step (one round trip to
	// Redis).
	Observe(ctx context.Context, keys []Key, network, sender string) ([]KeyState, error)
	// Suspect records a copy of a suspect attachment: the record that
	// holds one of its keys is updated (and takes the others), else a
	// new one is made (created); with Refresh, every key's hold starts
	// anew. It returns the record's id.
	Suspect(ctx context.Context, s Sighting) (id string, created bool, err error)
	// List returns the suspect records, most recently seen first.
	List(ctx context.Context) ([]Record, error)
	// Release lets a suspect fingerprint go: its keys are neither held
	// nor counted as suspect again for releaseFor. It reports whether
	// the id was known.
	Release(ctx context.Context, id string) (bool, error)
	Close() error
}

// KeyState is one key after a copy was counted.
type KeyState struct {
	Networks, Senders int64 // distinct, in the window, this copy included
	// Held: a hold is active (an attachment with this key was suspect
	// within hold).
	Held     bool
	Released bool
}

// Sighting is a copy of a suspect attachment: the one that made it
// suspect, or a later one (held, or would be in monitor mode).
type Sighting struct {
	ID       Key   // the id a new record gets
	Keys     []Key // the attachment's keys that reached min_networks or are held
	Networks int64
	Senders  int64
	Held     bool
	// Refresh: the copy came from min_networks networks within the
	// window; the holds start anew.
	Refresh bool
	Name    string
	Kind    string
	Size    int64
}

// Record is a suspect fingerprint, as list shows it.
type Record struct {
	ID        string    `json:"id"`
	Keys      []string  `json:"keys"`
	FirstSeen time.Time `json:"first_seen"` // when it became suspect
	LastSeen  time.Time `json:"last_seen"`
	Networks  int64     `json:"networks"`
	Senders   int64     `json:"senders"`
	Held      int64     `json:"held"` // copies held (or that would have been, in monitor mode)
	Name      string    `json:"name"`
	Kind      string    `json:"kind"`
	Size      int64     `json:"size"`
	Released  bool      `json:"released"`
}

// Settings shape the counts.
type Settings struct {
	Window      time.Duration
	MinNetworks int64
	Hold        time.Duration
}

// slots: the window is counted in slotsPerWindow parts; a count covers
// the current part and the slotsPerWindow before it, so it spans the
// window and at most a part more.
const slotsPerWindow = 4

func (s Settings) slot(now time.Time) int64 {
	return now.UnixNano() / int64(s.Window/slotsPerWindow)
}

// releaseFor is how long a release lasts; maxRecords bounds the suspect
// records kept (the oldest seen go first); maxTracked bounds the distinct
// networks and senders remembered per key (counts past it stay there:
// min_networks is at most 100).
const (
	releaseFor = 7 * 24 * time.Hour
	maxRecords = 10000
	maxTracked = 255
)

// Memory is the in-process store. Its size is bounded by maxKeys: past
// it, a new key evicts the least telling of a few sampled ones (a key
// seen from one network only, the oldest).
type Memory struct {
	set     Settings
	maxKeys int
	now     func() time.Time
	epoch   time.Time
	seed    maphash.Seed
	// idleSecs: a key unseen this long has nothing left in its window.
	idleSecs uint32

	mu      sync.Mutex
	keys    map[Key]entry
	records map[string]*Record
	byKey   map[Key]string // record id per key of a record
}

// entry is one key's counts: 40 bytes, the first network and sender
// inline (most keys are seen once).
type entry struct {
	net0, snd0 stamp
	more       *extra
	first      uint32 // seconds since the store's epoch
	last       uint32
	heldUntil  uint32 // 0: no hold
	released   uint32 // released until
}

type stamp struct {
	h    uint32
	slot uint32 // slot number + 1; 0 is an empty stamp
}

type extra struct{ nets, snds []stamp }

// NewMemory returns an empty in-memory store.
func NewMemory(set Settings, maxKeys int, now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	idle := set.Window + set.Window/slotsPerWindow + time.Second
	return &Memory{set: set, maxKeys: maxKeys, now: now, epoch: now().Add(-time.Second), seed: maphash.MakeSeed(),
		idleSecs: uint32(idle / time.Second), keys: map[Key]entry{}, records: map[string]*Record{}, byKey: map[Key]string{}}
}

func (m *Memory) secs(t time.Time) uint32 { return uint32(max(1, t.Sub(m.epoch)/time.Second)) }

func (m *Memory) Observe(_ context.Context, keys []Key, network, sender string) ([]KeyState, error) {
	now := m.now()
	t := m.secs(now)
	slot := uint32(m.set.slot(now)) + 1
	nh := uint32(maphash.String(m.seed, network))
	sh := uint32(maphash.String(m.seed, sender))
	out := make([]KeyState, len(keys))
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, k := range keys {
		e, ok := m.keys[k]
		if !ok {
			m.makeRoom(t)
			e.first = t
		}
		e.last = t
		nets := e.addNet(nh, slot)
		snds := e.addSender(sh, slot)
		st := KeyState{Networks: nets, Senders: snds, Released: e.released > t}
		st.Held = !st.Released && e.heldUntil > t
		m.keys[k] = e
		out[i] = st
	}
	return out, nil
}

// live reports a stamp within the window.
func live(s stamp, slot uint32) bool { return s.slot != 0 && s.slot+slotsPerWindow >= slot }

// add puts h into a set of stamps (first one inline, the rest in list)
// and returns how many are live.
func add(first *stamp, list *[]stamp, h, slot uint32) int64 {
	found := false
	var n int64
	if first.slot != 0 && first.h == h {
		first.slot, found = slot, true
	}
	if !live(*first, slot) {
		*first = stamp{}
	}
	if first.slot != 0 {
		n++
	}
	l := (*list)[:0]
	for _, s := range *list {
		if s.h == h {
			s.slot, found = slot, true
		}
		if live(s, slot) {
			l = append(l, s)
			n++
		}
	}
	*list = l
	if !found {
		switch {
		case first.slot == 0:
			*first = stamp{h, slot}
			n++
		case len(l) < maxTracked-1:
			*list = append(l, stamp{h, slot})
			n++
		}
	}
	return n
}

func (e *entry) addNet(h, slot uint32) int64 {
	if e.more == nil && (e.net0.slot == 0 || e.net0.h == h) {
		// The common case, a key's first copy: nothing allocated.
		var none []stamp
		return add(&e.net0, &none, h, slot)
	}
	e.grow()
	return add(&e.net0, &e.more.nets, h, slot)
}

func (e *entry) addSender(h, slot uint32) int64 {
	if e.more == nil && (e.snd0.slot == 0 || e.snd0.h == h) {
		var none []stamp
		return add(&e.snd0, &none, h, slot)
	}
	e.grow()
	return add(&e.snd0, &e.more.snds, h, slot)
}

func (e *entry) grow() {
	if e.more == nil {
		e.more = &extra{}
	}
}

// makeRoom keeps the map within maxKeys: a few sampled keys whose window
// is over and that hold nothing are dropped; when the map is full, the
// least telling of a sample goes too.
func (m *Memory) makeRoom(t uint32) {
	const sample = 16
	var victim Key
	victimScore := uint64(1<<64 - 1)
	seen := 0
	full := len(m.keys) >= m.maxKeys
	for k, e := range m.keys {
		if seen++; seen > sample {
			break
		}
		idle := t > e.last+m.idleSecs && e.heldUntil <= t && e.released <= t
		if idle {
			delete(m.keys, k)
			full = false
			continue
		}
		if full {
			// Fewest networks first, then the longest unseen.
			nets := uint64(1)
			if e.more != nil {
				nets += uint64(len(e.more.nets))
			}
			if e.heldUntil > t || e.released > t {
				nets += 1 << 20
			}
			if score := nets<<32 | uint64(e.last); score < victimScore {
				victim, victimScore = k, score
			}
		}
	}
	if full && victimScore != 1<<64-1 {
		delete(m.keys, victim)
	}
}

// Len is the number of keys kept.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.keys)
}

func (m *Memory) Suspect(_ context.Context, s Sighting) (string, bool, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var r *Record
	for _, k := range s.Keys {
		if id, ok := m.byKey[k]; ok && m.records[id] != nil {
			r = m.records[id]
			break
		}
	}
	created := r == nil
	if created {
		if len(m.records) >= maxRecords {
			m.dropOldestRecord()
		}
		r = &Record{ID: s.ID.String(), FirstSeen: now, Name: s.Name, Kind: s.Kind, Size: s.Size}
		m.records[r.ID] = r
	}
	for _, k := range s.Keys {
		if m.byKey[k] != r.ID {
			m.byKey[k] = r.ID
			r.Keys = append(r.Keys, k.String())
		}
		if s.Refresh {
			e := m.keys[k]
			if e.first == 0 {
				e.first, e.last = m.secs(now), m.secs(now)
			}
			e.heldUntil = m.secs(now.Add(m.set.Hold))
			m.keys[k] = e
		}
	}
	r.LastSeen = now
	r.Networks = max(r.Networks, s.Networks)
	r.Senders = max(r.Senders, s.Senders)
	if s.Held {
		r.Held++
	}
	return r.ID, created, nil
}

func (m *Memory) dropOldestRecord() {
	var oldest *Record
	for _, r := range m.records {
		if oldest == nil || r.LastSeen.Before(oldest.LastSeen) {
			oldest = r
		}
	}
	delete(m.records, oldest.ID)
	for _, s := range oldest.Keys {
		if k, err := ParseKey(s); err == nil && m.byKey[k] == oldest.ID {
			delete(m.byKey, k)
		}
	}
}

func (m *Memory) List(context.Context) ([]Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Record, 0, len(m.records))
	for _, r := range m.records {
		c := *r
		c.Keys = slices.Clone(r.Keys)
		out = append(out, c)
	}
	sortRecords(out)
	return out, nil
}

func sortRecords(rs []Record) {
	slices.SortFunc(rs, func(a, b Record) int {
		if c := b.LastSeen.Compare(a.LastSeen); c != 0 {
			return c
		}
		return compareStrings(a.ID, b.ID)
	})
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (m *Memory) Release(_ context.Context, id string) (bool, error) {
	if _, err := ParseKey(id); err != nil {
		return false, err
	}
	now := m.now()
	until := m.secs(now.Add(releaseFor))
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.records[id]
	if r == nil {
		return false, nil
	}
	r.Released = true
	for _, s := range r.Keys {
		if kk, err := ParseKey(s); err == nil {
			e := m.keys[kk]
			if e.first == 0 {
				e.first, e.last = m.secs(now), m.secs(now)
			}
			e.released, e.heldUntil = until, 0
			m.keys[kk] = e
		}
	}
	return true, nil
}

func (m *Memory) Close() error { return nil }
