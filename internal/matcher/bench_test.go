package matcher

import (
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"testing"
)

// base64Body is a message body like worm traffic: MIME base64 lines of 76
// characters and CRLF.
func base64Body(r *rand.Rand, size int) []byte {
	raw := make([]byte, size*3/4)
	for i := range raw {
		raw[i] = byte(r.Uint32())
	}
	enc := base64.StdEncoding.EncodeToString(raw)
	body := make([]byte, 0, size+size/38)
	for len(enc) > 0 {
		n := min(76, len(enc))
		body = append(append(body, enc[:n]...), '\r', '\n')
		enc = enc[n:]
	}
	return body
}

func benchPatterns(r *rand.Rand, count, minLen, maxLen int) []Pattern {
	patterns := make([]Pattern, count)
	for i := range patterns {
		n := minLen + r.IntN(maxLen-minLen+1)
		patterns[i] = Pattern{Name: fmt.Sprintf("SIG%d", i), Bytes: randomBase64Line(r, n)}
	}
	return patterns
}

// BenchmarkScan measures throughput of the streaming scanner over a clean
// base64 body fed in 65,535-byte chunks, as the MTA sends it.
func BenchmarkScan(b *testing.B) {
	for _, lens := range []struct {
		name     string
		min, max int
	}{{"typical60-80", 60, 80}, {"min16", MinPatternLen, MinPatternLen}} {
		for _, count := range []int{23, 1000, 10000} {
			b.Run(fmt.Sprintf("%s/sigs=%d", lens.name, count), func(b *testing.B) {
				r := rand.New(rand.NewPCG(7, uint64(count)))
				m := mustNew(b, benchPatterns(r, count, lens.min, lens.max))
				body := base64Body(r, 4<<20)
				s := m.NewScanner()
				b.SetBytes(int64(len(body)))
				b.ResetTimer()
				for b.Loop() {
					s.Reset()
					for i := 0; i < len(body); i += 65535 {
						if s.Write(body[i:min(i+65535, len(body))]) {
							b.Fatal("clean body matched")
						}
					}
				}
			})
		}
	}
}

func BenchmarkBuild10000(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	patterns := benchPatterns(r, 10000, 60, 80)
	for b.Loop() {
		mustNew(b, patterns)
	}
}

// BenchmarkScanDisturbedCache scans 100 KB messages with other memory
// touched between messages, as in the daemon, where protocol buffers pass
// through the caches between scans: 256 KiB (a message's packets) or
// 64 MiB (everything flushed). Only the scan is timed.
func BenchmarkScanDisturbedCache(b *testing.B) {
	for _, count := range []int{23, 10000} {
		for _, disturb := range []int{256 << 10, 64 << 20} {
			b.Run(fmt.Sprintf("sigs=%d/touched=%dKiB", count, disturb>>10), func(b *testing.B) {
				benchDisturbed(b, count, disturb)
			})
		}
	}
}

func benchDisturbed(b *testing.B, count, disturb int) {
	{
		{
			r := rand.New(rand.NewPCG(9, uint64(count)))
			m := mustNew(b, benchPatterns(r, count, 60, 80))
			body := base64Body(r, 100_000)
			flush := make([]byte, disturb)
			s := m.NewScanner()
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			for b.Loop() {
				b.StopTimer()
				for i := 0; i < len(flush); i += 64 {
					flush[i]++
				}
				b.StartTimer()
				s.Reset()
				for i := 0; i < len(body); i += 65535 {
					s.Write(body[i:min(i+65535, len(body))])
				}
			}
		}
	}
}
