package quota

import (
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"mailguard/internal/maildir"
	"mailguard/internal/stats"
	"mailguard/internal/userdir"
)

// renameExchange swaps two paths atomically (renameat2 RENAME_EXCHANGE),
// as a local user can with files in their own Maildir.
func renameExchange(a, b string) error {
	nr := map[string]uintptr{"amd64": 316, "arm64": 276, "386": 353}[runtime.GOARCH]
	if nr == 0 {
		return syscall.ENOSYS
	}
	pa, _ := syscall.BytePtrFromString(a)
	pb, _ := syscall.BytePtrFromString(b)
	const atFDCWD = ^uintptr(99) // AT_FDCWD, -100
	const renameExchange = 2
	_, _, e := syscall.Syscall6(nr, atFDCWD, uintptr(unsafe.Pointer(pa)), atFDCWD, uintptr(unsafe.Pointer(pb)), renameExchange, 0)
	if e != 0 {
		return e
	}
	return nil
}

func procCount(t *testing.T, what string) int {
	if what == "fd" {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no Threads: line")
	return 0
}

// A user who swaps their maildirsize for a FIFO, over and over, while
// mail for them arrives: every RCPT is answered at once, and neither
// threads nor descriptors pile up. MAILGUARD_SWAP_SECONDS sets how long
// (default 30).
func TestMaildirsizeSwappedForFIFO(t *testing.T) {
	seconds := 30
	if v, err := strconv.Atoi(os.Getenv("MAILGUARD_SWAP_SECONDS")); err == nil && v > 0 {
		seconds = v
	}
	root := t.TempDir()
	dir := box(t, root, "mallory", "1000S\n990 1\n")
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := renameExchange(filepath.Join(dir, "maildirsize"), fifo); err != nil {
		t.Fatalf("renameat2: %v", err)
	}
	renameExchange(filepath.Join(dir, "maildirsize"), fifo) // back
	users, err := userdir.Parse("users", strings.NewReader("mallory@example.edu "+dir+"\n"), userdir.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := New(Options{Users: users, Usage: &maildir.UsageReader{}, Margin: 100})

	threads, fds := procCount(t, "threads"), procCount(t, "fd")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				renameExchange(filepath.Join(dir, "maildirsize"), fifo)
			}
		}
	}()
	var answered, slow atomic.Int64
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				done := make(chan struct{})
				go func() { f.Decide("mallory@example.edu", 0); close(done) }()
				select {
				case <-done:
					answered.Add(1)
				case <-time.After(2 * time.Second):
					slow.Add(1)
					return // this RCPT hangs
				}
			}
		}()
	}
	time.Sleep(time.Until(deadline))
	close(stop)
	wg.Wait()
	if slow.Load() > 0 {
		t.Fatalf("%d RCPTs got no answer within 2 s (%d answered)", slow.Load(), answered.Load())
	}
	runtime.GC()
	time.Sleep(100 * time.Millisecond)
	if n := procCount(t, "threads"); n > threads+8 {
		t.Errorf("threads %d -> %d", threads, n)
	}
	if n := procCount(t, "fd"); n > fds+4 {
		t.Errorf("descriptors %d -> %d", fds, n)
	}
	t.Logf("%d RCPTs answered in %d s; threads %d -> %d; descriptors %d -> %d", answered.Load(), seconds, threads, procCount(t, "threads"), fds, procCount(t, "fd"))
}

// A Maildir mailguard cannot read lets mail through, as before, but the
// log says so once per mailbox per interval, and the summary counts it.
func TestUnreadableMaildirReported(t *testing.T) {
	root := t.TempDir()
	notADir := filepath.Join(root, "carol")
	os.WriteFile(notADir, []byte("not a Maildir"), 0o600)
	users, err := userdir.Parse("users", strings.NewReader("carol@example.edu "+notADir+"\n"), userdir.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	counter := stats.NewCounter()
	f := New(Options{Users: users, Usage: &maildir.UsageReader{Wait: time.Second, Recount: time.Nanosecond}, Log: slog.New(slog.NewTextHandler(&logs, nil)), Stats: counter})
	for i := 0; i < 5; i++ {
		if v := f.Decide("carol@example.edu", 0); v.Final() {
			t.Fatalf("refused on a guess: %v", v)
		}
	}
	if n := strings.Count(logs.String(), "quota: cannot read a Maildir"); n != 1 || !strings.Contains(logs.String(), notADir) {
		t.Fatalf("%d log lines:\n%s", n, logs.String())
	}
	if hits := counter.Take().Hits; hits["quota:maildir unreadable"] == 0 {
		t.Fatalf("not counted: %v", hits)
	}
}
