package hostilemail

import (
	"crypto/sha256"
	"io"
	"testing"
)

// countingHash counts and hashes what a message writes.
type countingHash struct {
	n int64
	h io.Writer
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

// Every message writes the same bytes each time, has an envelope, and the
// large ones are as large as the options say.
func TestCorpusDeterministicAndSized(t *testing.T) {
	o := Defaults(Options{Local: "user@example.edu", Remote: "bulk.example", Signature: "SIG", Blocked: "x@pest.example", Virus: "VIRUS"})
	first := map[string][32]byte{}
	for round := 0; round < 2; round++ {
		for _, m := range Corpus(o) {
			if m.Write == nil || len(m.To) == 0 || m.From == "" && !m.NullSender {
				t.Fatalf("%s: incomplete %+v", m.Name, m)
			}
			h := sha256.New()
			c := &countingHash{h: h}
			if err := m.Write(c); err != nil {
				t.Fatal(err)
			}
			var sum [32]byte
			copy(sum[:], h.Sum(nil))
			if round == 0 {
				first[m.Name] = sum
			} else if first[m.Name] != sum {
				t.Errorf("%s: not the same bytes twice", m.Name)
			}
			want := map[string]int64{"big-body": o.Big, "big-attachment": o.Attachment, "header-fields": int64(o.Fields) * 10}[m.Name]
			if c.n < want {
				t.Errorf("%s: wrote %d bytes, want at least %d", m.Name, c.n, want)
			}
		}
	}
}
