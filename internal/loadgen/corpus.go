// Package loadgen drives a milter over the protocol the way Postfix does,
// replaying a corpus of messages at a chosen concurrency, and measures
// throughput, latency and verdicts. It also writes synthetic corpora.
package loadgen

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"

	"mailguard/internal/message"
)

// Message is one corpus message, split as the MTA would send it.
type Message struct {
	Name   string
	Fields []message.Field
	Body   []byte // CRLF line ends
}

// LoadCorpus reads every regular file under dir (or the file itself).
func LoadCorpus(dir string) ([]Message, error) {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("%s: no message files", dir)
	}
	sort.Strings(paths)
	msgs := make([]Message, 0, len(paths))
	for _, p := range paths {
		m, err := loadMessage(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

func loadMessage(path string) (Message, error) {
	f, err := os.Open(path)
	if err != nil {
		return Message{}, err
	}
	defer f.Close()
	r := message.NewReader(f)
	fields, err := r.Header()
	if err != nil {
		return Message{}, err
	}
	var body []byte
	for {
		c, err := r.BodyChunk()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Message{}, err
		}
		body = append(body, c...)
	}
	return Message{Name: path, Fields: fields, Body: body}, nil
}

// GenerateOptions describe a synthetic corpus.
type GenerateOptions struct {
	Dir   string
	Count int
	// Size is the average message size in bytes; sizes vary ±50%.
	Size int
	// Infect, if set, is planted in the attachment of every InfectEvery-th message.
	Infect      []byte
	InfectEvery int
	Seed        uint64
}

// Generate writes a corpus of messages with a short text part and a base64
// attachment, like the mail a site receives (and like worm traffic).
func Generate(o GenerateOptions) error {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(o.Seed, 1))
	for i := 0; i < o.Count; i++ {
		size := o.Size/2 + r.IntN(o.Size+1)
		var infect []byte
		if o.InfectEvery > 0 && len(o.Infect) > 0 && i%o.InfectEvery == o.InfectEvery-1 {
			infect = o.Infect
		}
		msg := synthetic(r, i, size, infect)
		name := filepath.Join(o.Dir, fmt.Sprintf("msg%06d.eml", i))
		if err := os.WriteFile(name, msg, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func synthetic(r *rand.Rand, i, size int, infect []byte) []byte {
	var b bytes.Buffer
	boundary := fmt.Sprintf("=_boundary_%d_%d", i, r.Uint32())
	fmt.Fprintf(&b, "Return-Path: <sender%d@example.org>\r\nDelivered-To: user%d@example.edu\r\n", r.IntN(1000), r.IntN(100))
	fmt.Fprintf(&b, "From: Sender %d <sender%d@example.org>\r\nTo: user@example.edu\r\nSubject: report %d\r\n", i, i, r.Uint32())
	fmt.Fprintf(&b, "Date: Mon, 2 Mar 2026 10:00:00 +0000\r\nMessage-ID: <%d.%d@example.org>\r\nMIME-Version: 1.0\r\n", i, r.Uint64())
	fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nPlease find the report attached.\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: application/octet-stream; name=\"report%d.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", boundary, i)
	raw := make([]byte, max(0, size-b.Len())*3/4)
	for j := range raw {
		raw[j] = byte(r.Uint32())
	}
	enc := base64.StdEncoding.EncodeToString(raw)
	plantAt := -1
	if infect != nil {
		plantAt = len(enc) / 2 / 76
	}
	for line := 0; len(enc) > 0; line++ {
		n := min(76, len(enc))
		if line == plantAt {
			b.Write(infect)
			b.WriteString("\r\n")
		}
		b.WriteString(enc[:n])
		b.WriteString("\r\n")
		enc = enc[n:]
	}
	fmt.Fprintf(&b, "--%s--\r\n", boundary)
	return b.Bytes()
}

// WriteSignatures writes a signature file of count random base64 lines,
// like real worm signatures, for measuring with many signatures loaded.
func WriteSignatures(w io.Writer, count, minLen, maxLen int, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 2))
	for i := 0; i < count; i++ {
		n := minLen + r.IntN(maxLen-minLen+1)
		raw := make([]byte, n)
		for j := range raw {
			raw[j] = byte(r.Uint32())
		}
		fmt.Fprintf(w, "SYNTHETIC_%05d =\n%s\n", i, base64.StdEncoding.EncodeToString(raw)[:n])
	}
}
