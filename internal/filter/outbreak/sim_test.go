package outbreak_test

import (
	"bytes"
	"encoding/base64"

	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/filter/outbreak"
	"mailguard/internal/filters/filterstest"
	"mailguard/internal/loadgen"
	"mailguard/internal/logging"
	"mailguard/internal/milterdoor"
	"mailguard/internal/milterdoor/doortest"
	"mailguard/internal/pipeline"
	"mailguard/internal/sigmine"
)

// simMsg is one message of the simulated stream.
type simMsg struct {
	kind string // worm, clean, newsletter, document
	addr string // the SMTP client
	from string
	m    loadgen.Message
}

type simSizes struct{ worms, clean, newsletter, document, networks int }

func sizes() simSizes {
	if *outbreak.Full {
		return simSizes{worms: 300, clean: 1000, newsletter: 300, document: 20, networks: 5}
	}
	return simSizes{worms: 40, clean: 150, newsletter: 60, document: 20, networks: 5}
}

// writeMessage writes a message with one attachment.
func writeMessage(dir, file, from, subject, name, ctype string, data []byte) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <user@example.edu>\r\nSubject: %s\r\nMIME-Version: 1.0\r\n", from, subject)
	b.WriteString("Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n")
	fmt.Fprintf(&b, "--b1\r\nContent-Type: %s; name=\"%s\"\r\nContent-Disposition: attachment; filename=\"%s\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", ctype, name, name)
	enc := base64.StdEncoding.EncodeToString(data)
	for len(enc) > 0 {
		n := min(76, len(enc))
		b.WriteString(enc[:n] + "\r\n")
		enc = enc[n:]
	}
	b.WriteString("--b1--\r\n")
	return os.WriteFile(filepath.Join(dir, file), b.Bytes(), 0o644)
}

func random(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// corpus writes the stream's messages into folders of their kind and
// returns them mixed in a random order, each with its client.
func corpus(t *testing.T, dir string, sz simSizes) []simMsg {
	r := rand.New(rand.NewPCG(21, 21))
	dirs := map[string]string{}
	for _, k := range []string{"worm", "clean", "newsletter", "document"} {
		dirs[k] = filepath.Join(dir, k)
		os.MkdirAll(dirs[k], 0o755)
	}
	// The worm: one program, 4 random bytes changed in every copy.
	if err := loadgen.GenerateWorm(loadgen.WormOptions{Dir: dirs["worm"], Count: sz.worms, Payload: 77, Size: 20000, Widths: []int{76, 72}, Seed: 5, Vary: 4}); err != nil {
		t.Fatal(err)
	}
	// Clean mail: every message its own risky attachment (archives,
	// Office documents, HTML), the documents sharing a 3 KB logo.
	logo := random(r, 3000)
	for i := 0; i < sz.clean; i++ {
		var name, ctype string
		var data []byte
		switch i % 4 {
		case 0:
			name, ctype, data = fmt.Sprintf("photos%d.zip", i), "application/zip", append([]byte("PK\x03\x04"), random(r, 5000+r.IntN(20000))...)
		case 1:
			name, ctype = fmt.Sprintf("letter%d.docx", i), "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
			data = append(append(append([]byte("PK\x03\x04"), random(r, 4000+r.IntN(8000))...), logo...), random(r, 4000+r.IntN(8000))...)
		case 2:
			name, ctype, data = fmt.Sprintf("page%d.html", i), "text/html", []byte(fmt.Sprintf("<html><body>%x</body></html>", random(r, 2000+r.IntN(3000))))
		default:
			name, ctype, data = fmt.Sprintf("minutes%d.doc", i), "application/msword", append([]byte("\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"), random(r, 8000+r.IntN(20000))...)
		}
		if err := writeMessage(dirs["clean"], fmt.Sprintf("clean%05d.eml", i), fmt.Sprintf("person%d@example.org", i), "notes", name, ctype, data); err != nil {
			t.Fatal(err)
		}
	}
	news := []byte(fmt.Sprintf("<html><body>Our newsletter %x</body></html>", random(r, 6000)))
	for i := 0; i < sz.newsletter; i++ {
		writeMessage(dirs["newsletter"], fmt.Sprintf("news%05d.eml", i), "news@lists.example.com", "News", "issue42.html", "text/html", news)
	}
	doc := append([]byte("PK\x03\x04"), random(r, 30000)...)
	for i := 0; i < sz.document; i++ {
		writeMessage(dirs["document"], fmt.Sprintf("doc%05d.eml", i), fmt.Sprintf("colleague%d@partner%d.example", i, i%sz.networks), "Fwd: the plan", "plan.docx", "application/zip", doc)
	}
	var out []simMsg
	for _, kind := range []string{"worm", "clean", "newsletter", "document"} { // in order: the same stream every run
		msgs, err := loadgen.LoadCorpus(dirs[kind])
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range msgs {
			s := simMsg{kind: kind, m: m}
			switch kind {
			case "worm": // a new network for every copy, a forged sender
				s.addr, s.from = fmt.Sprintf("10.%d.%d.7", i/250, i%250), fmt.Sprintf("x%d@forged%d.example", r.IntN(1e6), i)
			case "clean":
				s.addr, s.from = fmt.Sprintf("172.%d.%d.9", 16+i%16, i/16%256), fmt.Sprintf("person%d@example.org", i)
			case "newsletter": // one sender's network, several of its hosts
				s.addr, s.from = fmt.Sprintf("198.51.100.%d", 1+i%200), "bounces@lists.example.com"
			case "document": // forwarded around five partner networks
				s.addr, s.from = fmt.Sprintf("203.0.%d.%d", 110+i%sz.networks, 1+i), fmt.Sprintf("colleague%d@partner%d.example", i, i%sz.networks)
			}
			out = append(out, s)
		}
	}
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// send runs one message through the milter protocol as Postfix would,
// from the given client, and returns its outcome ("accept", "451 4.7.1").
func send(t *testing.T, c *milter.Client, s simMsg) string {
	macros := milter.NewMacroBag()
	sess, err := c.Session(macros)
	if err != nil {
		t.Error(err)
		return "error"
	}
	defer sess.Close()
	if _, err := sess.Conn("client.example", milter.FamilyInet, 40000, s.addr); err != nil {
		t.Error(err)
		return "error"
	}
	if _, err := sess.Helo("client.example"); err != nil {
		t.Error(err)
		return "error"
	}
	steps := []func() (*milter.Action, error){
		func() (*milter.Action, error) { return sess.Mail(s.from, "") },
		func() (*milter.Action, error) { return sess.Rcpt("user@example.edu", "") },
		func() (*milter.Action, error) { return sess.DataStart() },
	}
	for _, f := range s.m.Fields {
		steps = append(steps, func() (*milter.Action, error) { return sess.HeaderField(f.Name, f.Value, nil) })
	}
	steps = append(steps, sess.HeaderEnd)
	for i := 0; i < len(s.m.Body); i += 65535 {
		chunk := s.m.Body[i:min(i+65535, len(s.m.Body))]
		steps = append(steps, func() (*milter.Action, error) { return sess.BodyChunk(chunk) })
	}
	steps = append(steps, func() (*milter.Action, error) { _, a, err := sess.End(); return a, err })
	for _, step := range steps {
		act, err := step()
		if err != nil {
			t.Error(err)
			return "error"
		}
		switch act.Type {
		case milter.ActionContinue, milter.ActionAccept:
			continue
		case milter.ActionRejectWithCode:
			return act.SMTPReply[:min(9, len(act.SMTPReply))]
		default:
			return fmt.Sprintf("action %v", act.Type)
		}
	}
	return "accept"
}

func startDoor(t *testing.T, p *pipeline.Pipeline) *milter.Client {
	_, addr := doortest.Serve(t, p, milterdoor.Options{})
	return milter.NewClient("tcp", addr, milter.WithReadTimeout(30*time.Second), milter.WithWriteTimeout(30*time.Second))
}

const minNetworks = 10

func outbreakConfig(samples, backend string) string {
	return fmt.Sprintf(`filters = ["outbreak"]
[outbreak]
backend = %q
window = "30m"
min_networks = %d
hold = "6h"
samples = %q
max_samples = 50
`, backend, minNetworks, samples)
}

// TestOutbreakSimulation: a new worm among clean mail, a newsletter and a
// popular document, through the milter protocol. The worm is held after
// min_networks networks, nothing else is, the samples hold the worm, and
// sigmine's signatures from them refuse every copy and no clean message.
// `go test ./internal/filter/outbreak -run TestOutbreakSimulation -outbreak.full -v`
// runs it at full size and logs the figures.
func TestOutbreakSimulation(t *testing.T) {
	sz := sizes()
	dir := t.TempDir()
	stream := corpus(t, dir, sz)
	samples := filepath.Join(dir, "samples")
	p, counts := filterstest.Build(t, "", outbreakConfig(samples, "memory"), pipeline.Env{Log: logging.Discard(), Now: time.Now})
	client := startDoor(t, p)

	type tally struct{ accepted, held, other int }
	got := map[string]*tally{}
	start := time.Now()
	for _, s := range stream {
		tl := got[s.kind]
		if tl == nil {
			tl = &tally{}
			got[s.kind] = tl
		}
		switch v := send(t, client, s); v {
		case "accept":
			tl.accepted++
		case "451 4.7.1":
			tl.held++
		default:
			tl.other++
			t.Errorf("%s from %s: %s", s.kind, s.addr, v)
		}
	}
	elapsed := time.Since(start)
	for _, k := range []string{"worm", "clean", "newsletter", "document"} {
		t.Logf("%-10s accepted %4d, held %4d", k, got[k].accepted, got[k].held)
	}
	t.Logf("%d messages through the milter protocol in %s; counters: %v", len(stream), elapsed.Round(time.Millisecond), counts.Take().Hits)
	if w := got["worm"]; w.accepted > minNetworks+1 || w.accepted+w.held != sz.worms {
		t.Errorf("worm: %d copies accepted, %d held; want at most %d accepted", w.accepted, w.held, minNetworks+1)
	}
	for _, k := range []string{"clean", "newsletter", "document"} {
		if got[k].held != 0 {
			t.Errorf("%s: %d copies held", k, got[k].held)
		}
	}

	// The samples: worm copies only, from before the threshold on.
	files, _ := filepath.Glob(filepath.Join(samples, "new", "*"))
	if len(files) != min(50, sz.worms) {
		t.Errorf("%d samples written, want %d", len(files), min(50, sz.worms))
	}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if !bytes.Contains(b, []byte("X-Outbreak-Fingerprint: c")) || !bytes.Contains(b, []byte(".pif\"")) {
			t.Fatalf("%s is not a worm sample:\n%.400s", f, b)
		}
	}

	// sigmine on the samples, against the clean mail, the newsletter and
	// the document; the signatures refuse every worm copy in scan and
	// nothing else.
	res, err := sigmine.Mine(sigmine.Options{Samples: []string{samples}, Clean: []string{filepath.Join(dir, "clean"), filepath.Join(dir, "newsletter"), filepath.Join(dir, "document")}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Signatures) == 0 || len(res.Uncovered) > 0 {
		t.Fatalf("sigmine: %d signatures, %d samples uncovered", len(res.Signatures), len(res.Uncovered))
	}
	var sigs strings.Builder
	res.Write(&sigs, "WORM_OUTBREAK")
	sigFile := filepath.Join(dir, "signatures")
	os.WriteFile(sigFile, []byte(sigs.String()), 0o644)
	vp, _ := filterstest.Build(t, "", fmt.Sprintf("filters = [\"virus\"]\n[virus]\nsignatures = %q\n", sigFile), pipeline.Env{Now: time.Now})
	refused := map[string]int{}
	for _, k := range []string{"worm", "clean", "newsletter", "document"} {
		paths, _ := filepath.Glob(filepath.Join(dir, k, "*"))
		for _, p := range paths {
			b, _ := os.ReadFile(p)
			if filterstest.Scan(t, vp, string(b)).Verdict.Final() {
				refused[k]++
			}
		}
	}
	t.Logf("sigmine: %d signatures from %d samples; scan refuses worm %d/%d, clean %d, newsletter %d, document %d",
		len(res.Signatures), res.Samples, refused["worm"], sz.worms, refused["clean"], refused["newsletter"], refused["document"])
	if refused["worm"] != sz.worms || refused["clean"]+refused["newsletter"]+refused["document"] != 0 {
		t.Errorf("the mined signatures refuse worm %d/%d, clean %d, newsletter %d, document %d", refused["worm"], sz.worms, refused["clean"], refused["newsletter"], refused["document"])
	}
}
