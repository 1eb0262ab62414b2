package loadgen

import (
	"bytes"
	"strings"
	"testing"

	"mailguard/internal/sigfile"
)

func TestGenerateAndLoad(t *testing.T) {
	dir := t.TempDir()
	mark := "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3"
	if err := Generate(GenerateOptions{Dir: dir, Count: 40, Size: 20000, Infect: []byte(mark), InfectEvery: 10, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	msgs, err := LoadCorpus(dir)
	if err != nil {
		t.Fatal(err)
	}
	infected := 0
	for _, m := range msgs {
		if len(m.Fields) < 5 || !bytes.Contains(m.Body, []byte("\r\n")) || bytes.Contains(bytes.ReplaceAll(m.Body, []byte("\r\n"), nil), []byte("\n")) {
			t.Fatalf("%s: malformed message", m.Name)
		}
		if bytes.Contains(m.Body, []byte(mark)) {
			infected++
		}
	}
	if len(msgs) != 40 || infected != 4 {
		t.Fatalf("%d messages, %d infected; want 40 and 4", len(msgs), infected)
	}
}

func TestWriteSignaturesParses(t *testing.T) {
	var buf bytes.Buffer
	WriteSignatures(&buf, 500, 16, 80, 1)
	sigs, err := sigfile.Parse("gen", strings.NewReader(buf.String()))
	if err != nil || len(sigs) != 500 {
		t.Fatalf("%d signatures: %v", len(sigs), err)
	}
}
