package sigmine

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"mailguard/internal/message"
	"mailguard/internal/safefile"
)

// corpus is a list of message files, read one body at a time: memory holds
// a body per worker, never the corpus.
type corpus struct {
	name    string
	files   []string
	maxBody int
}

// each calls fn with every readable body, from workers goroutines; fn must
// be safe for concurrent use. Unreadable files are returned as errors.
func (c *corpus) each(workers int, progress io.Writer, fn func(i int, body []byte)) []error {
	var (
		next atomic.Int64
		done atomic.Int64
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for w := 0; w < max(1, workers); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(c.files) {
					return
				}
				body, err := c.read(i)
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s: %w", c.files[i], err))
					mu.Unlock()
				} else {
					fn(i, body)
				}
				if n := done.Add(1); progress != nil && (n%250 == 0 || int(n) == len(c.files)) {
					mu.Lock()
					fmt.Fprintf(progress, "\rsigmine: %s %d/%d", c.name, n, len(c.files))
					if int(n) == len(c.files) {
						fmt.Fprintln(progress)
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return errs
}

func (c *corpus) read(i int) ([]byte, error) {
	f, _, err := safefile.Open(c.files[i], safefile.Options{})
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return message.ReadBody(f, c.maxBody)
}

// lockedCounts adds hits to per-signature counts from several workers.
type lockedCounts struct{ mu sync.Mutex }

func (l *lockedCounts) add(counts []int, hits []int, matched *int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range hits {
		counts[p]++
	}
	if matched != nil && len(hits) > 0 {
		*matched++
	}
}
