package outbreak_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"mailguard/internal/filters/filterstest"
	"mailguard/internal/loadgen"
	"mailguard/internal/logging"
	"mailguard/internal/pipeline"
)

var rounds = flag.Int("outbreak.rounds", 1, "BenchmarkMessage: rounds of off and on, interleaved")

// BenchmarkMessage is the CPU per message with the outbreak filter off
// (the virus filter alone) and on (virus, then outbreak), interleaved:
// `go test ./internal/filter/outbreak -run '^$' -bench Message -benchtime 2000x -args -outbreak.rounds 5`.
// "generated": loadgen's corpus (100 KB messages, a base64 attachment
// no rule calls risky: walked and sniffed only); "risky": every message
// a distinct 75 KB zip (walked, hashed, chunked, counted, kept for the
// samples). One client network: nothing turns suspect, as in everyday mail.
func BenchmarkMessage(b *testing.B) {
	dir := b.TempDir()
	gen := filepath.Join(dir, "generated")
	if err := loadgen.Generate(loadgen.GenerateOptions{Dir: gen, Count: 100, Size: 100000, Seed: 1}); err != nil {
		b.Fatal(err)
	}
	risky := filepath.Join(dir, "risky")
	os.MkdirAll(risky, 0o755)
	for i := 0; i < 100; i++ {
		writeMessage(risky, fmt.Sprintf("r%03d.eml", i), "a@example.org", "zip", "files.zip", "application/zip", append([]byte("PK\x03\x04"), payload(uint64(i), 75000)...))
	}
	for _, corpus := range []string{"generated", "risky"} {
		msgs, err := loadgen.LoadCorpus(filepath.Join(dir, corpus))
		if err != nil {
			b.Fatal(err)
		}
		raw := make([][]byte, len(msgs))
		for i, m := range msgs {
			raw[i], _ = os.ReadFile(m.Name)
		}
		// Rounds interleave off and on: the machine's noise falls on both.
		for round := 1; round <= *rounds; round++ {
			for _, on := range []string{"off", "on", "on-nosamples", "attachments"} {
				filters, extra := `["virus"]`, ""
				switch on {
				case "on":
					filters = `["virus", "outbreak"]`
				case "attachments": // the attachments filter's walk, for comparison
					filters, extra = `["virus", "attachments"]`, "[attachments]\nblock_names = [\"*.scr\"]\n"
				case "on-nosamples":
					filters, extra = `["virus", "outbreak"]`, "max_samples = 0\n"
				}
				b.Run(fmt.Sprintf("%s/%s/round%d", corpus, on, round), func(b *testing.B) {
					cfg := fmt.Sprintf("filters = %s\n[outbreak]\nsamples = %q\n%s", filters, filepath.Join(b.TempDir(), "samples"), extra)
					p, _ := filterstest.Build(b, "", cfg, pipeline.Env{Log: logging.Discard(), Now: time.Now})
					b.ResetTimer()
					before := cpuTime()
					defer func() { b.ReportMetric(float64((cpuTime()-before).Microseconds())/float64(b.N), "cpu-us/op") }()
					for i := 0; i < b.N; i++ {
						deliver(b, p, "192.0.2.1", "a@example.org", false, raw[i%len(raw)])
					}
				})
			}
		}
	}
}

// cpuTime is the process's CPU time, user and system: what the message
// cost, whatever else the machine runs meanwhile.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
