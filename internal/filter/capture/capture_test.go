package capture

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"mailguard/internal/pipeline"
	"mailguard/internal/verdict"
)

type env struct {
	f   *Filter
	dir string
	sw  string
	p   *pipeline.Pipeline
	now time.Time
}

func setup(t testing.TB, opts Options, before ...pipeline.Filter) *env {
	t.Helper()
	root := t.TempDir()
	e := &env{dir: filepath.Join(root, "capture"), sw: filepath.Join(root, "capture.on"), now: time.Now()}
	opts.Dir, opts.Switch = e.dir, e.sw
	opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Now = func() time.Time { return e.now }
	f, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.f = f
	var members []pipeline.Member
	for _, b := range before {
		members = append(members, pipeline.Member{Filter: b})
	}
	members = append(members, pipeline.Member{Filter: f, OnError: pipeline.OnErrorAccept})
	e.p = pipeline.New(pipeline.Env{Log: opts.Log, Now: opts.Now}, members...)
	return e
}

func (e *env) switchOn(t testing.TB) {
	os.WriteFile(e.sw, nil, 0o600)
	e.now = e.now.Add(2 * time.Second) // past the once-a-second look
}

func (e *env) switchOff() {
	os.Remove(e.sw)
	e.now = e.now.Add(2 * time.Second)
}

// send runs one message through the pipeline; body is sent in chunks.
func (e *env) send(from string, rcpts []string, body []byte, end bool) verdict.Verdict {
	conn := &pipeline.Conn{Hostname: "mx.example.org", Addr: "192.0.2.1", Helo: "mx.example.org"}
	m, _ := e.p.Begin(conn, pipeline.AllStages, from, "")
	defer m.Close()
	for _, r := range rcpts {
		m.Rcpt(r, "")
	}
	m.SetQueueID("4BC1F984436")
	m.Header("From", "<"+from+">")
	m.Header("Subject", "test\r\n folded")
	m.EndOfHeaders()
	for i := 0; i < len(body); i += 65535 {
		m.Body(body[i:min(i+65535, len(body))])
	}
	if !end {
		return verdict.Pass // aborted: Close without End
	}
	return m.End()
}

func (e *env) copies(t testing.TB) []string {
	t.Helper()
	var out []string
	entries, _ := os.ReadDir(filepath.Join(e.dir, "new"))
	for _, en := range entries {
		b, err := os.ReadFile(filepath.Join(e.dir, "new", en.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	if tmp, _ := os.ReadDir(filepath.Join(e.dir, "tmp")); len(tmp) != 0 {
		t.Fatalf("%d partial files left in tmp/", len(tmp))
	}
	return out
}

func TestSwitch(t *testing.T) {
	e := setup(t, Options{})
	if r, _ := e.f.Stages(); r != 0 {
		t.Fatalf("switch off but stages %b asked for", r)
	}
	e.send("a@example.org", []string{"u@example.edu"}, []byte("body\r\n"), true)
	if n := len(e.copies(t)); n != 0 {
		t.Fatalf("%d copies with the switch off", n)
	}
	e.switchOn(t)
	if r, _ := e.f.Stages(); r&pipeline.StageBody == 0 {
		t.Fatal("switch on but no body asked for")
	}
	e.send("a@example.org", []string{"u@example.edu"}, []byte("body\r\n"), true)
	e.switchOff()
	e.send("a@example.org", []string{"u@example.edu"}, []byte("body\r\n"), true)
	if n := len(e.copies(t)); n != 1 {
		t.Fatalf("%d copies, want 1", n)
	}
}

func TestCopyContentAndPermissions(t *testing.T) {
	e := setup(t, Options{})
	e.switchOn(t)
	body := bytes.Repeat([]byte("R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=\r\n"), 3000) // spans chunks
	e.send("a@example.org", []string{"u@example.edu", "v@example.edu"}, body, true)
	copies := e.copies(t)
	if len(copies) != 1 {
		t.Fatalf("%d copies", len(copies))
	}
	want := "X-Envelope-Client: mx.example.org [192.0.2.1]\r\nX-Envelope-Helo: mx.example.org\r\n" +
		"X-Envelope-From: <a@example.org>\r\nX-Envelope-To: <u@example.edu>, <v@example.edu>\r\nX-Envelope-Queue-ID: 4BC1F984436\r\n" +
		"X-Envelope-Date: " + e.now.Format(time.RFC1123Z) + "\r\n" +
		"From: <a@example.org>\r\nSubject: test\r\n folded\r\n\r\n" + string(body)
	if copies[0] != want {
		t.Fatalf("copy differs:\n%.400q\nwant\n%.400q", copies[0], want)
	}
	entries, _ := os.ReadDir(filepath.Join(e.dir, "new"))
	info, _ := entries[0].Info()
	if info.Mode().Perm() != 0o600 || !strings.Contains(entries[0].Name(), ",S=") {
		t.Errorf("copy %s mode %o", entries[0].Name(), info.Mode().Perm())
	}
	for _, sub := range []string{"", "tmp", "new", "cur"} {
		if fi, _ := os.Stat(filepath.Join(e.dir, sub)); fi.Mode().Perm() != 0o700 {
			t.Errorf("%s/ mode %o", sub, fi.Mode().Perm())
		}
	}
}

func TestSelection(t *testing.T) {
	e := setup(t, Options{Recipients: []string{"target@example.edu"}, Senders: []string{"@suspect.example"}})
	e.switchOn(t)
	e.send("a@example.org", []string{"u@example.edu"}, []byte("1\r\n"), true)                 // neither
	e.send("a@example.org", []string{"u@x.edu", "Target@Example.EDU"}, []byte("2\r\n"), true) // recipient
	e.send("b@SUSPECT.example", []string{"u@example.edu"}, []byte("3\r\n"), true)             // sender domain
	if n := len(e.copies(t)); n != 2 {
		t.Fatalf("%d copies, want 2", n)
	}
}

// rejecter refuses every message in its first body chunk, like the virus
// filter does.
type rejecter struct{}

func (rejecter) Name() string { return "virus" }
func (rejecter) Stages() (pipeline.Stage, pipeline.Stage) {
	return pipeline.StageBody, pipeline.StageEndOfMessage
}
func (rejecter) NewCheck(context.Context, *pipeline.Envelope) (pipeline.Check, error) {
	return rejectCheck{}, nil
}

type rejectCheck struct{ pipeline.NopCheck }

func (rejectCheck) Body(context.Context, []byte) (verdict.Verdict, error) {
	return verdict.Rejectf(550, verdict.EnhSecurity, "VIRUS FOUND"), nil
}

func TestIncludeRejected(t *testing.T) {
	body := bytes.Repeat([]byte("worm worm worm worm\r\n"), 10000) // several chunks after the verdict
	for _, include := range []bool{false, true} {
		e := setup(t, Options{IncludeRejected: include}, rejecter{})
		e.switchOn(t)
		if v := e.send("a@example.org", []string{"u@example.edu"}, body, true); v.Action != verdict.Reject {
			t.Fatalf("capture changed the verdict: %v", v)
		}
		copies := e.copies(t)
		if !include && len(copies) != 0 || include && (len(copies) != 1 || !strings.HasSuffix(copies[0], string(body))) {
			t.Fatalf("include_rejected=%v: %d copies", include, len(copies))
		}
	}
}

func TestMaxSizeAndAbort(t *testing.T) {
	e := setup(t, Options{MaxSize: 10000})
	e.switchOn(t)
	e.send("a@example.org", []string{"u@example.edu"}, bytes.Repeat([]byte("x"), 20000), true)
	e.send("a@example.org", []string{"u@example.edu"}, []byte("aborted\r\n"), false)
	if n := len(e.copies(t)); n != 0 || e.f.Skipped.Load() != 1 {
		t.Fatalf("%d copies, %d skipped", n, e.f.Skipped.Load())
	}
}

// TestFullDisk writes into a tiny tmpfs: the copy fails, leaves nothing
// behind, and the message is accepted.
func TestFullDisk(t *testing.T) {
	e := setup(t, Options{})
	mnt := e.dir
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount tmpfs: %v %s", err, out)
		}
		t.Skipf("cannot mount a tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	for _, sub := range []string{"tmp", "new", "cur"} {
		os.Mkdir(filepath.Join(mnt, sub), 0o700)
	}
	e.switchOn(t)
	v := e.send("a@example.org", []string{"u@example.edu"}, bytes.Repeat([]byte("y"), 1<<20), true)
	if v.Final() {
		t.Fatalf("a full disk changed the verdict: %v", v)
	}
	if n := len(e.copies(t)); n != 0 || e.f.Failed.Load() != 1 {
		t.Fatalf("%d copies, %d failures", n, e.f.Failed.Load())
	}
	// Room again: copies resume.
	e.send("a@example.org", []string{"u@example.edu"}, []byte("small\r\n"), true)
	if n := len(e.copies(t)); n != 1 {
		t.Fatalf("%d copies after the disk had room again", n)
	}
}

// TestLargeMessageFlatMemory copies a 50 MB message: memory in use must
// not grow with the message.
func TestLargeMessageFlatMemory(t *testing.T) {
	e := setup(t, Options{MaxSize: 0})
	e.switchOn(t)
	chunk := bytes.Repeat([]byte("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\r\n"), 65535/38)
	conn := &pipeline.Conn{Addr: "192.0.2.1"}
	m, _ := e.p.Begin(conn, pipeline.AllStages, "a@example.org", "")
	m.Rcpt("u@example.edu", "")
	m.EndOfHeaders()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapInuse, ms.HeapInuse
	total := 0
	for total < 50<<20 {
		m.Body(chunk)
		total += len(chunk)
		if total%(4<<20) < len(chunk) {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
	}
	m.End()
	m.Close()
	if grew := int64(peak) - int64(base); grew > 8<<20 {
		t.Fatalf("heap grew by %d bytes while copying 50 MB", grew)
	}
	copies, _ := os.ReadDir(filepath.Join(e.dir, "new"))
	info, _ := copies[0].Info()
	if len(copies) != 1 || info.Size() < 50<<20 {
		t.Fatalf("copy missing or short")
	}
}

// BenchmarkSwitchOff is what capture costs a message while switched off.
func BenchmarkSwitchOff(b *testing.B) {
	e := setup(b, Options{})
	conn := &pipeline.Conn{Addr: "192.0.2.1"}
	for b.Loop() {
		m, _ := e.p.Begin(conn, pipeline.AllStages, "a@example.org", "")
		m.End()
		m.Close()
	}
}

// BenchmarkSwitchOn is the copy rate to disk for 100 KB messages,
// including fsync.
func BenchmarkSwitchOn(b *testing.B) {
	e := setup(b, Options{})
	e.switchOn(b)
	body := bytes.Repeat([]byte("R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=ABCDEFGHIJKLMNOPQRSTUVWXYZab\r\n"), 100000/78)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		e.send("a@example.org", []string{"u@example.edu"}, body, true)
	}
}
