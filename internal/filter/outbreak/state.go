package outbreak

import (
	"log/slog"
	"sync"
)

// state is what the filter keeps beyond one message: the store (counts,
// holds, records), the samples kept and written, and the control socket.
// A reload that keeps the samples folder and the settings the store was
// made with keeps all of it; other changes give the folder a new store
// (the old counts are dropped, which the log says) but keep the socket.
//
// The pipeline on this branch has no filter lifecycle yet, so the states
// are found by samples folder in a table of the package (as ratelimit
// keeps its Redis clients); Filter.Close releases a holder, and the last
// one closes the store and the socket, for the pipeline's Close to call.
type state struct {
	dir     string
	key     string
	holders int

	mu      sync.Mutex
	store   Store
	samples *samples
	ctl     *controlServer
}

var (
	statesMu sync.Mutex
	states   = map[string]*state{}
)

// acquire returns the samples folder's state, made with settings key by
// make (a new one, or replacing the store of one made otherwise).
func acquire(dir, key string, log *slog.Logger, make func() (Store, *samples, error)) (*state, error) {
	statesMu.Lock()
	defer statesMu.Unlock()
	st := states[dir]
	if st != nil && st.key == key {
		st.holders++
		return st, nil
	}
	store, smp, err := make()
	if err != nil {
		return nil, err
	}
	if st != nil {
		st.mu.Lock()
		old := st.store
		st.store, st.samples, st.key = store, smp, key
		st.mu.Unlock()
		old.Close()
		log.Warn("outbreak: settings changed: counts and kept copies start afresh", "samples", dir)
		st.holders++
		return st, nil
	}
	st = &state{dir: dir, key: key, holders: 1, store: store, samples: smp}
	ctl, err := listenControl(ControlSocket(dir), st.currentStore, log)
	if err != nil {
		log.Warn("outbreak: no control socket; `mailguard outbreak` cannot reach this process", "error", err.Error())
	}
	st.ctl = ctl
	states[dir] = st
	return st, nil
}

func (st *state) currentStore() Store {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.store
}

// release drops one holder; the last closes the store and the socket.
func (st *state) release() error {
	statesMu.Lock()
	defer statesMu.Unlock()
	if st.holders--; st.holders > 0 {
		return nil
	}
	if states[st.dir] == st {
		delete(states, st.dir)
	}
	var err error
	if st.ctl != nil {
		err = st.ctl.Close()
	}
	if cerr := st.store.Close(); err == nil {
		err = cerr
	}
	return err
}
