package clamav_test

import (
	"fmt"
	"mailguard/internal/clamd/clamdtest"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"mailguard/internal/pipeline"
)

// recordingClamd is a stand-in clamd that records what each stream
// carried and whether it was finished (the zero-length chunk).
type recordingClamd struct {
	sock     string
	mu       sync.Mutex
	received []byte
	finished int
	streams  int
	sessions int // IDSESSION connections ever opened
	open     int // and still open
}

func newRecordingClamd(t *testing.T) *recordingClamd {
	r := &recordingClamd{sock: filepath.Join(t.TempDir(), "clamd.sock")}
	l, err := net.Listen("unix", r.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go r.serve(c)
		}
	}()
	return r
}

func (r *recordingClamd) serve(c net.Conn) {
	defer c.Close()
	for id := 1; ; {
		cmd, err := clamdtest.ReadCommand(c)
		switch {
		case err != nil:
			return
		case cmd == "zPING":
			c.Write([]byte("PONG\x00"))
			return
		case cmd == "zIDSESSION":
			r.mu.Lock()
			r.sessions++
			r.open++
			r.mu.Unlock()
			defer func() {
				r.mu.Lock()
				r.open--
				r.mu.Unlock()
			}()
			continue
		case cmd != "zINSTREAM":
			return
		}
		r.mu.Lock()
		r.streams++
		r.mu.Unlock()
		if !r.stream(c, id) {
			return
		}
		id++
	}
}

// stream reads one INSTREAM's chunks and answers it.
func (r *recordingClamd) stream(c net.Conn, id int) bool {
	err := clamdtest.ReadChunks(c, 1<<30, func(chunk []byte) {
		r.mu.Lock()
		r.received = append(r.received, chunk...)
		r.mu.Unlock()
	})
	if err != nil {
		return false
	}
	r.mu.Lock()
	r.finished++
	r.mu.Unlock()
	fmt.Fprintf(c, "%d: stream: OK\x00", id)
	return true
}

func (r *recordingClamd) snapshot() (string, int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return string(r.received), r.streams, r.finished
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// The stream starts while the message arrives: clamd has the header and
// the first chunk before the end of the message is even sent.
func TestStreamsWhileTheMessageArrives(t *testing.T) {
	fake := newRecordingClamd(t)
	p, _ := build(t, "filters = [\"clamav\"]\n[clamav]\naddress = \"unix:"+fake.sock+"\"\nclamd_config = \"\"\n")
	m, _ := p.Begin(&pipeline.Conn{}, pipeline.AllStages, "a@example.org", "")
	defer m.Close()
	m.Rcpt("b@example.com", "")
	m.Header("Subject", "hi\n\tthere")
	m.Header("Content-Type", "text/plain")
	m.EndOfHeaders()
	m.Body([]byte("first chunk\r\n"))
	want := "Subject: hi\r\n\tthere\r\nContent-Type: text/plain\r\n\r\nfirst chunk\r\n"
	waitFor(t, "the header and first chunk", func() bool { got, _, _ := fake.snapshot(); return got == want })
	if _, _, finished := fake.snapshot(); finished != 0 {
		t.Fatal("stream finished before the end of the message")
	}
	if v := m.End(); v.Final() {
		t.Fatalf("got %v", v)
	}
	if _, _, finished := fake.snapshot(); finished != 1 {
		t.Fatal("stream not finished at the end of the message")
	}
}

// A message the signature filter refuses is never scanned: its stream is
// dropped unfinished.
func TestRefusedBeforeIsNotScanned(t *testing.T) {
	fake := newRecordingClamd(t)
	const sobig = "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3"
	dir := t.TempDir()
	sigs := filepath.Join(dir, "sigs")
	writeFile(t, sigs, "WORM =\n"+sobig+"\n")
	p, _ := build(t, "filters = [\"virus\", \"clamav\"]\n[virus]\nsignatures = \""+sigs+"\"\n[clamav]\naddress = \"unix:"+fake.sock+"\"\nclamd_config = \"\"\n")
	out := run(t, p, clean+sobig+"\r\n"+strings.Repeat("more body\r\n", 1000))
	if out.Verdict.Filter != "virus" {
		t.Fatalf("got %v from %s", out.Verdict, out.Verdict.Filter)
	}
	if _, streams, finished := fake.snapshot(); finished != 0 || streams > 1 {
		t.Fatalf("%d streams, %d finished: clamd was asked to scan a refused message", streams, finished)
	}
}
