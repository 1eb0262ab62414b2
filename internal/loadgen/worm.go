package loadgen

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// WormOptions describe copies of one worm: per copy a random sender,
// subject, boundary and body text, and the same attachment bytes, base64
// wrapped at one of Widths (worms and the MTAs they pass through wrap
// differently).
type WormOptions struct {
	Dir     string
	Count   int
	Payload uint64 // seed of the attachment bytes: copies with the same seed carry the same worm
	Size    int    // attachment bytes
	Widths  []int  // base64 line widths, used in turn; default 76
	Seed    uint64 // seed of the per-copy parts
	Prefix  string // file name prefix
	// Vary changes this many attachment bytes per copy, at random places
	// (as a worm that pads or numbers its copies does): no two copies
	// then share a hash.
	Vary int
}

// GenerateWorm writes the copies.
func GenerateWorm(o WormOptions) error {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return err
	}
	if len(o.Widths) == 0 {
		o.Widths = []int{76}
	}
	if o.Size == 0 {
		o.Size = 20000
	}
	pr := rand.New(rand.NewPCG(o.Payload, 99))
	payload := make([]byte, o.Size)
	for i := range payload {
		payload[i] = byte(pr.Uint32())
	}
	enc := base64.StdEncoding.EncodeToString(payload)
	r := rand.New(rand.NewPCG(o.Seed, 7))
	varied := make([]byte, len(payload))
	words := []string{"document", "details", "your", "approved", "screensaver", "movie", "application", "wicked", "thank", "you", "please", "see", "the", "attached", "file", "for"}
	for i := 0; i < o.Count; i++ {
		var b bytes.Buffer
		boundary := fmt.Sprintf("----=_NextPart_%03d_%04X_%08X", r.IntN(1000), r.IntN(65536), r.Uint32())
		fmt.Fprintf(&b, "From: %s%d@%s.example\r\nTo: user%d@example.edu\r\n", words[r.IntN(len(words))], r.IntN(10000), words[r.IntN(len(words))], r.IntN(100))
		fmt.Fprintf(&b, "Subject: Re: %s %s\r\nMessage-ID: <%d.%d@worm.example>\r\nMIME-Version: 1.0\r\n", words[r.IntN(len(words))], words[r.IntN(len(words))], r.Uint64(), i)
		fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n", boundary)
		fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain\r\n\r\n", boundary)
		for w := 3 + r.IntN(8); w > 0; w-- {
			b.WriteString(words[r.IntN(len(words))] + " ")
		}
		fmt.Fprintf(&b, "\r\n\r\n--%s\r\nContent-Type: application/octet-stream; name=\"%s%d.pif\"\r\n", boundary, words[r.IntN(len(words))], r.IntN(100))
		b.WriteString("Content-Transfer-Encoding: base64\r\n\r\n")
		width := o.Widths[i%len(o.Widths)]
		if o.Vary > 0 {
			copy(varied, payload)
			for v := 0; v < o.Vary; v++ {
				varied[r.IntN(len(varied))] = byte(r.Uint32())
			}
			enc = base64.StdEncoding.EncodeToString(varied)
		}
		for s := enc; len(s) > 0; {
			n := min(width, len(s))
			b.WriteString(s[:n] + "\r\n")
			s = s[n:]
		}
		fmt.Fprintf(&b, "\r\n--%s--\r\n", boundary)
		name := filepath.Join(o.Dir, fmt.Sprintf("%sworm%05d.eml", o.Prefix, i))
		if err := os.WriteFile(name, b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}
