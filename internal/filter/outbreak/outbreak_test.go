package outbreak_test

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"mailguard/internal/filter/outbreak"
	"mailguard/internal/filters"
	"mailguard/internal/filters/filterstest"
	"mailguard/internal/message"
	"mailguard/internal/pipeline"
	"mailguard/internal/stats"
	"mailguard/internal/verdict"
)

type macros map[string]string

func (m macros) Macro(name string) (string, bool) {
	v, ok := m[strings.Trim(name, "{}")]
	return v, ok
}

// deliver runs a message through the pipeline from a client.
func deliver(t testing.TB, p *pipeline.Pipeline, addr, from string, auth bool, msg []byte) (verdict.Verdict, *pipeline.Envelope) {
	t.Helper()
	m := macros{}
	if auth {
		m["auth_authen"] = "alice"
	}
	cn := p.Open(context.Background(), &pipeline.Conn{Addr: addr, Hostname: "[" + addr + "]", Family: pipeline.FamilyInet, Macros: m})
	defer cn.Close()
	cn.Connect()
	ms, v := cn.Begin(pipeline.AllStages, pipeline.AllModifications, from, "")
	if v.Final() {
		return v, nil
	}
	defer ms.Close()
	ms.Rcpt("user@example.edu", "")
	r := message.NewReader(bytes.NewReader(msg))
	fields, err := r.Header()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fields {
		ms.Header(f.Name, f.Value)
	}
	ms.EndOfHeaders()
	for {
		c, err := r.BodyChunk()
		if err != nil {
			break
		}
		ms.Body(c)
	}
	v = ms.End()
	return v, ms.Envelope()
}

func attachmentMessage(name string, data []byte) []byte {
	var b bytes.Buffer
	b.WriteString("From: <a@example.org>\r\nSubject: hi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n")
	b.WriteString("--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n")
	fmt.Fprintf(&b, "--b\r\nContent-Type: application/octet-stream; name=\"%s\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", name)
	enc := base64.StdEncoding.EncodeToString(data)
	for len(enc) > 0 {
		n := min(76, len(enc))
		b.WriteString(enc[:n] + "\r\n")
		enc = enc[n:]
	}
	b.WriteString("--b--\r\n")
	return b.Bytes()
}

func build(t testing.TB, dir, extra string) (*pipeline.Pipeline, *stats.Counter, *bytes.Buffer) {
	logs := &bytes.Buffer{}
	cfg := fmt.Sprintf("filters = [\"outbreak\"]\n[outbreak]\nmin_networks = 3\nsamples = %q\nmax_samples = 4\n%s", filepath.Join(dir, "samples"), extra)
	p, counts := filterstest.Build(t, "", cfg, pipeline.Env{Log: slog.New(slog.NewTextHandler(logs, nil)), Now: time.Now})
	return p, counts, logs
}

func payload(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestHeldAfterMinNetworks(t *testing.T) {
	dir := t.TempDir()
	p, counts, logs := build(t, dir, `exempt = ["192.0.2.0/24"]`)
	worm := attachmentMessage("w.scr", payload(1, 8000))
	// Exempt and logged-in clients are neither counted nor held.
	for i := 0; i < 5; i++ {
		if v, _ := deliver(t, p, fmt.Sprintf("192.0.2.%d", i+1), "x@y", false, worm); v.Final() {
			t.Fatalf("exempt client held: %v", v)
		}
		if v, _ := deliver(t, p, fmt.Sprintf("10.9.%d.1", i), "x@y", true, worm); v.Final() {
			t.Fatalf("logged-in client held: %v", v)
		}
	}
	// Three copies from one network are one network.
	for i := 0; i < 3; i++ {
		if v, _ := deliver(t, p, fmt.Sprintf("10.0.0.%d", i+1), "x@y", false, worm); v.Final() {
			t.Fatalf("copy %d held: %v", i, v)
		}
	}
	for i := 1; i < 3; i++ { // the 2nd and 3rd networks
		if v, _ := deliver(t, p, fmt.Sprintf("10.0.%d.1", i), "x@y", false, worm); v.Final() {
			t.Fatalf("network %d held: %v", i+1, v)
		}
	}
	v, _ := deliver(t, p, "10.0.3.1", "x@y", false, worm)
	if code, enh, _ := v.Reply(); code != 451 || enh != "4.7.1" {
		t.Fatalf("4th network: %v", v)
	}
	// The exempt still pass.
	if v, _ := deliver(t, p, "192.0.2.9", "x@y", false, worm); v.Final() {
		t.Fatalf("exempt client held: %v", v)
	}
	if n := strings.Count(logs.String(), "fingerprint suspect"); n != 1 {
		t.Fatalf("%d suspect lines:\n%s", n, logs)
	}
	if hits := counts.Take().Hits; hits["outbreak:suspect"] != 1 {
		t.Fatalf("counts %v", hits)
	}
	// A different attachment is not held.
	if v, _ := deliver(t, p, "10.0.4.1", "x@y", false, attachmentMessage("w.scr", payload(2, 8000))); v.Final() {
		t.Fatalf("another attachment held: %v", v)
	}
	// Plain mail is not looked at.
	if v, _ := deliver(t, p, "10.0.4.1", "x@y", false, []byte("Subject: x\r\nContent-Type: text/plain\r\n\r\nhello\r\n")); v.Final() {
		t.Fatal(v)
	}
	// A message that is itself the file, whatever type it declares, is.
	single := "Content-Type: text/plain\r\nContent-Disposition: attachment; filename=\"w.scr\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		base64.StdEncoding.EncodeToString(payload(1, 8000)) + "\r\n"
	if v, _ := deliver(t, p, "10.0.5.1", "x@y", false, []byte(single)); !v.Final() {
		t.Fatal("a single-part copy of the worm was not held")
	}
	files, _ := filepath.Glob(filepath.Join(dir, "samples", "new", "*"))
	if len(files) != 4 {
		t.Fatalf("%d samples, want max_samples = 4", len(files))
	}
}

func TestMonitorModeHoldsNothing(t *testing.T) {
	dir := t.TempDir()
	p, _, logs := build(t, dir, `mode = "monitor"`)
	worm := attachmentMessage("w.exe", payload(3, 8000))
	for i := 0; i < 6; i++ {
		v, env := deliver(t, p, fmt.Sprintf("10.1.%d.1", i), "x@y", false, worm)
		if v.Final() {
			t.Fatalf("monitor mode held copy %d: %v", i, v)
		}
		if i >= 3 && len(env.Monitored()) != 1 {
			t.Fatalf("copy %d not recorded as would-hold: %+v", i, env.Monitored())
		}
	}
	if !strings.Contains(logs.String(), "would be held") {
		t.Fatalf("log:\n%s", logs)
	}
}

func TestControlSocketListAndRelease(t *testing.T) {
	dir := t.TempDir()
	p, _, _ := build(t, dir, "")
	worm := attachmentMessage("w.exe", payload(4, 8000))
	for i := 0; i < 4; i++ {
		deliver(t, p, fmt.Sprintf("10.2.%d.1", i), "x@y", false, worm)
	}
	sock := outbreak.ControlSocket(filepath.Join(dir, "samples"))
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v", fi, err)
	}
	ctx := context.Background()
	reply, err := outbreak.Ask(ctx, sock, outbreak.Request{Op: "list"})
	if err != nil || len(reply.Records) != 1 {
		t.Fatalf("%+v %v", reply, err)
	}
	r := reply.Records[0]
	if r.Networks < 3 || r.Held != 1 || r.Name != "w.exe" || r.Released {
		t.Fatalf("%+v", r)
	}
	if v, _ := deliver(t, p, "10.2.9.1", "x@y", false, worm); !v.Final() {
		t.Fatal("not held before release")
	}
	reply, _ = outbreak.Ask(ctx, sock, outbreak.Request{Op: "release", ID: r.ID})
	if !reply.Released {
		t.Fatalf("%+v", reply)
	}
	if v, _ := deliver(t, p, "10.2.10.1", "x@y", false, worm); v.Final() {
		t.Fatalf("held after release: %v", v)
	}
	reply, _ = outbreak.Ask(ctx, sock, outbreak.Request{Op: "release", ID: "c0000000000000001"})
	if reply.Released || reply.Error == "" {
		t.Fatalf("unknown id: %+v", reply)
	}
	// Raw requests: junk and overlong lines get an error, never a crash.
	for _, line := range []string{"release ../../etc/passwd\n", "rm -rf\n", strings.Repeat("x", 5000) + "\n", "list extra\n"} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(line))
		b := make([]byte, 4096)
		n, _ := c.Read(b)
		c.Close()
		if !bytes.Contains(b[:n], []byte(`"error"`)) {
			t.Errorf("%.30q: %s", line, b[:n])
		}
	}
}

// A huge attachment, a malformed one, a nested bomb: a safe verdict, the
// copy not kept past its bound, the budget back where it was.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	p, _, _ := build(t, dir, `sample_memory = "1M"`)
	huge := attachmentMessage("big.zip", payload(5, 12<<20))
	if v, _ := deliver(t, p, "10.3.0.1", "x@y", false, huge); v.Final() {
		t.Fatal(v)
	}
	var nested bytes.Buffer
	nested.WriteString("Content-Type: multipart/mixed; boundary=\"a\"\r\n\r\n")
	for i := 0; i < 50; i++ {
		fmt.Fprintf(&nested, "--a\r\nContent-Type: message/rfc822\r\n\r\nContent-Type: multipart/mixed; boundary=\"a\"\r\n\r\n")
	}
	for _, m := range [][]byte{
		nested.Bytes(),
		[]byte("Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: application/zip; name=\"a.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!not base64 at all\r\nUEsDBA==\r\n"),
		[]byte("Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n\r\n"),
		attachmentMessage("a.zip", []byte("PK\x03\x04")),
	} {
		if v, _ := deliver(t, p, "10.3.0.1", "x@y", false, m); v.Final() {
			t.Fatalf("%v for %.80q", v, m)
		}
	}
	// An archive bomb: 200 MB of zeros in a 200 KB zip. The filter never
	// inflates an archive: it costs what its compressed bytes cost.
	var bomb bytes.Buffer
	zw := zip.NewWriter(&bomb)
	w, _ := zw.Create("zeros.bin")
	zeros := make([]byte, 1<<20)
	for i := 0; i < 200; i++ {
		w.Write(zeros)
	}
	zw.Close()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if v, _ := deliver(t, p, "10.3.0.2", "x@y", false, attachmentMessage("bomb.zip", bomb.Bytes())); v.Final() {
		t.Fatal(v)
	}
	runtime.ReadMemStats(&after)
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 16<<20 {
		t.Fatalf("a %d-byte archive bomb cost %d bytes of allocations", bomb.Len(), grown)
	}
	// A flood of distinct attachments, each kept until the window ends:
	// the kept copies stay within sample_memory.
	for i := 0; i < 300; i++ {
		deliver(t, p, fmt.Sprintf("10.4.%d.1", i%250), "x@y", false, attachmentMessage("f.zip", payload(uint64(100+i), 20000)))
	}
	if used := outbreak.SamplesUsed(p); used > 1<<20 || used == 0 {
		t.Fatalf("kept copies use %d bytes, budget 1 MiB", used)
	}
}

// Documents made from one template (a sixth of their bytes the same
// logo), each sent from its own network: the shared chunks are too few of
// a sketch to match, so none is held however many networks send them.
func TestSharedPartsAreNotOneFingerprint(t *testing.T) {
	dir := t.TempDir()
	p, _, _ := build(t, dir, "")
	logo := payload(7, 4000)
	for i := 0; i < 40; i++ {
		doc := append(append(append([]byte("PK\x03\x04"), payload(uint64(200+i), 8000)...), logo...), payload(uint64(300+i), 8000)...)
		if v, _ := deliver(t, p, fmt.Sprintf("10.5.%d.1", i), fmt.Sprintf("p%d@x", i), false, attachmentMessage("letter.docx", doc)); v.Final() {
			t.Fatalf("document %d held: %v", i, v)
		}
	}
}

// FuzzMessage runs arbitrary messages through the filter: a verdict,
// never a crash or a hang, and the kept copies within their budget.
func FuzzMessage(f *testing.F) {
	f.Add(attachmentMessage("w.exe", []byte("MZ\x90\x00 program")))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/zip; name=a.zip\r\nContent-Transfer-Encoding: base64\r\n\r\nUEsDBA==\r\n--b--\r\n"))
	f.Add([]byte("Content-Type: message/rfc822\r\n\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\n"))
	f.Add([]byte("Subject: plain\r\n\r\nhello\r\n"))
	dir := f.TempDir()
	p, _, _ := build(f, dir, `sample_memory = "1M"`)
	f.Fuzz(func(t *testing.T, msg []byte) {
		if _, err := message.NewReader(bytes.NewReader(msg)).Header(); err != nil {
			return // the MTA would not pass it as a header
		}
		deliver(t, p, "10.6.0.1", "x@y", false, msg)
		if used := outbreak.SamplesUsed(p); used > 1<<20 {
			t.Fatalf("kept copies use %d bytes", used)
		}
	})
}

// A reload (a new pipeline from the same settings, its predecessor
// given) keeps the counts, the holds and the control socket, also once
// the old pipeline is closed; new settings start the counts afresh and
// keep the socket; the last pipeline closed removes it.
func TestReloadKeepsState(t *testing.T) {
	dir := t.TempDir()
	reload := func(prev *pipeline.Pipeline, extra string) *pipeline.Pipeline {
		p := buildAfter(t, dir, prev, extra)
		if prev != nil {
			prev.Retire()
		}
		return p
	}
	worm := attachmentMessage("w.exe", payload(11, 8000))
	p1 := reload(nil, "")
	for i := 0; i < 2; i++ {
		deliver(t, p1, fmt.Sprintf("10.7.%d.1", i), "x@y", false, worm)
	}
	p2 := reload(p1, "")
	p1.Close()
	deliver(t, p2, "10.7.2.1", "x@y", false, worm)
	if v, _ := deliver(t, p2, "10.7.3.1", "x@y", false, worm); !v.Final() {
		t.Fatal("the counts before the reload were lost")
	}
	sock := outbreak.ControlSocket(filepath.Join(dir, "samples"))
	if r, err := outbreak.Ask(context.Background(), sock, outbreak.Request{Op: "list"}); err != nil || len(r.Records) != 1 {
		t.Fatalf("after the reload: %+v %v", r, err)
	}
	p3 := reload(p2, "window = \"10m\"")
	p2.Close()
	if v, _ := deliver(t, p3, "10.7.4.1", "x@y", false, worm); v.Final() {
		t.Fatalf("new settings kept the old holds: %v", v)
	}
	if r, err := outbreak.Ask(context.Background(), sock, outbreak.Request{Op: "list"}); err != nil || len(r.Records) != 0 {
		t.Fatalf("after new settings: %+v %v", r, err)
	}
	p3.Retire()
	p3.Close()
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("the control socket outlived the last pipeline: %v", err)
	}
}

// A reload whose build fails after this filter was built closes the new
// filter unused: the control socket must go on serving the running
// filter's holds, not the failed build's closed, empty store.
func TestFailedReloadKeepsControl(t *testing.T) {
	dir := t.TempDir()
	worm := attachmentMessage("w.exe", payload(12, 8000))
	running := buildAfter(t, dir, nil, "")
	defer running.Close()
	for i := 0; i < 4; i++ {
		deliver(t, running, fmt.Sprintf("10.8.%d.1", i), "x@y", false, worm)
	}
	sock := outbreak.ControlSocket(filepath.Join(dir, "samples"))
	if r, err := outbreak.Ask(context.Background(), sock, outbreak.Request{Op: "list"}); err != nil || len(r.Records) != 1 {
		t.Fatalf("before the reload: %+v %v", r, err)
	}
	failed := buildAfter(t, dir, running, "window = \"10m\"") // new settings: a store of its own
	failed.Close()                                            // a later filter's file was broken
	if r, err := outbreak.Ask(context.Background(), sock, outbreak.Request{Op: "list"}); err != nil || len(r.Records) != 1 {
		t.Fatalf("after a failed reload the socket lost the running holds: %+v %v", r, err)
	}
}

// buildAfter builds a pipeline of the outbreak filter (min_networks 3,
// samples in dir, and extra settings) as a reload after prev would.
func buildAfter(t *testing.T, dir string, prev *pipeline.Pipeline, extra string) *pipeline.Pipeline {
	t.Helper()
	cfg, err := filters.Parse("t.toml", []byte(fmt.Sprintf("filters = [\"outbreak\"]\n[outbreak]\nmin_networks = 3\nsamples = %q\n%s", filepath.Join(dir, "samples"), extra)))
	if err != nil {
		t.Fatal(err)
	}
	p, err := filters.BuildWith(cfg, pipeline.Env{Log: slog.New(slog.DiscardHandler), Now: time.Now}, filters.BuildOptions{Predecessor: prev})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
