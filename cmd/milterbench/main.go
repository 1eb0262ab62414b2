// Command milterbench drives any milter over the protocol the way Postfix
// does (every v6 option offered, 65,535-byte body chunks, one milter
// connection per SMTP session) and reports messages/s, latency percentiles
// and verdict counts: for sizing a setup and for measuring mailguard.
//
//	milterbench gen -dir DIR [-count N] [-size BYTES]
//	milterbench sigs [-count N] [-min LEN] [-max LEN] > FILE
//	milterbench worm -dir DIR [-count N] [-widths 76,72] [-payload SEED] [-vary N]
//	milterbench run -milter inet:127.0.0.1:8897 -corpus DIR [-c N] [-n N] [-pid PID]
package main

import (
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"mailguard/internal/listen"
	"mailguard/internal/loadgen"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `milterbench drives a milter the way Postfix does, and makes test data for it.

Usage:
  milterbench gen  -dir DIR [-count N] [-size BYTES]   write a corpus of generated messages
  milterbench sigs [-count N]                           print random signatures (a signature file)
  milterbench worm -dir DIR [-count N] [-widths 76,72]  write copies of a generated worm
  milterbench run  -milter ADDR -corpus DIR [-c N] [-n N] [-pid PID[,PID...] | -pid FILE]
                                                        replay the corpus at N connections and report
  milterbench slow load|memory|loris ...                slow connections, memory per connection, slow-loris peers

Run "milterbench COMMAND -h" for a command's flags.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "gen":
		return gen(args[1:], stdout, stderr)
	case "run":
		return runLoad(args[1:], stdout, stderr)
	case "sigs":
		return sigs(args[1:], stdout, stderr)
	case "worm":
		return worm(args[1:], stdout, stderr)
	case "slow":
		return slow(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "milterbench: unknown command %q (want gen, sigs, worm, run or slow)\n", args[0])
	return 2
}

func gen(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "write the corpus into `DIR`")
	count := fs.Int("count", 200, "number of messages")
	size := fs.Int("size", 100_000, "average message size in bytes (sizes vary ±50%)")
	infect := fs.String("infect", "", "plant this `LINE` in every -infect-every-th message")
	every := fs.Int("infect-every", 10, "with -infect: one message in this many")
	seed := fs.Uint64("seed", 1, "random seed")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" {
		fmt.Fprintln(stderr, "milterbench gen: -dir is required")
		return 2
	}
	err := loadgen.Generate(loadgen.GenerateOptions{Dir: *dir, Count: *count, Size: *size, Infect: []byte(*infect), InfectEvery: *every, Seed: *seed})
	if err != nil {
		fmt.Fprintf(stderr, "milterbench gen: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "milterbench gen: wrote %d messages of about %d bytes to %s\n", *count, *size, *dir)
	return 0
}

func runLoad(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("milter", "inet:127.0.0.1:8897", "the milter's `ADDRESS`, in the MTA's syntax")
	corpus := fs.String("corpus", "", "`DIR` of messages to replay")
	conc := fs.Int("c", 8, "concurrent milter connections")
	n := fs.Int("n", 2000, "messages to send in all")
	per := fs.Int("per-conn", 1, "messages per milter connection (SMTP session)")
	chunk := fs.Int("chunk", 65535, "body chunk size in bytes")
	pid := fs.String("pid", "", "the milter's process `IDS` (comma-separated) or a pid FILE, to report its CPU time per message and memory")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	a, err := listen.Parse(*addr)
	if err != nil {
		fmt.Fprintf(stderr, "milterbench: -milter %v\n", err)
		return 2
	}
	if *corpus == "" {
		fmt.Fprintln(stderr, "milterbench run: -corpus is required (make one with milterbench gen)")
		return 2
	}
	msgs, err := loadgen.LoadCorpus(*corpus)
	if err != nil {
		fmt.Fprintf(stderr, "milterbench: %v\n", err)
		return 1
	}
	pids, err := parsePIDs(*pid)
	if err != nil {
		fmt.Fprintf(stderr, "milterbench run: -pid %v\n", err)
		return 2
	}
	network := map[string]string{"tcp4": "tcp", "tcp6": "tcp", "unix": "unix"}[a.Network]
	res, err := loadgen.Run(loadgen.Options{Network: network, Address: a.Address, Corpus: msgs,
		Concurrency: *conc, Messages: *n, PerConnection: *per, ChunkSize: *chunk, PIDs: pids})
	if err != nil {
		fmt.Fprintf(stderr, "milterbench: %v\n", err)
		return 1
	}
	report(stdout, res, msgs, *conc)
	if res.Errors > 0 {
		fmt.Fprintf(stderr, "milterbench: %d messages failed; first error: %s\n", res.Errors, res.FirstError)
		return 1
	}
	return 0
}

func report(w io.Writer, r *loadgen.Result, msgs []loadgen.Message, conc int) {
	avg := r.CorpusBytes / int64(len(msgs))
	fmt.Fprintf(w, "messages: %d in %s with %d connections (corpus: %d messages, %d bytes average body)\n",
		r.Messages, r.Elapsed.Round(time.Millisecond), conc, len(msgs), avg)
	fmt.Fprintf(w, "rate: %.1f messages/s\n", r.Rate())
	fmt.Fprintf(w, "latency: p50 %s  p99 %s  max %s\n", r.Percentile(0.50).Round(time.Microsecond),
		r.Percentile(0.99).Round(time.Microsecond), r.Percentile(1).Round(time.Microsecond))
	fmt.Fprintf(w, "replies per message after negotiation: %.2f\n", r.RepliesPerMsg)
	fmt.Fprint(w, "verdicts:")
	for _, k := range slices.Sorted(maps.Keys(r.Verdicts)) {
		fmt.Fprintf(w, " %s=%d", k, r.Verdicts[k])
	}
	fmt.Fprintln(w)
	if r.ProcessSampled {
		fmt.Fprintf(w, "milter cpu: %s in all, %.1f µs per message\n", r.CPU, float64(r.CPUPerMessage().Nanoseconds())/1000)
		fmt.Fprintf(w, "milter rss: %d kB before, %d kB after, %d kB peak\n", r.RSSBeforeKB, r.RSSAfterKB, r.PeakRSSKB)
	}
	fmt.Fprintf(w, "errors: %d\n", r.Errors)
}

func sigs(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sigs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	count := fs.Int("count", 10000, "number of signatures")
	minLen := fs.Int("min", 60, "shortest pattern")
	maxLen := fs.Int("max", 80, "longest pattern")
	seed := fs.Uint64("seed", 1, "random seed")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *minLen < 16 || *maxLen < *minLen || *maxLen > 1000 {
		fmt.Fprintln(stderr, "milterbench sigs: want 16 <= -min <= -max <= 1000")
		return 2
	}
	loadgen.WriteSignatures(stdout, *count, *minLen, *maxLen, *seed)
	return 0
}

func worm(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("worm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "write the copies into `DIR`")
	count := fs.Int("count", 50, "number of copies")
	size := fs.Int("size", 20000, "attachment bytes")
	payload := fs.Uint64("payload", 1, "seed of the attachment: the same seed is the same worm")
	vary := fs.Int("vary", 0, "attachment bytes changed at random in each copy (no two copies then share a hash)")
	widthList := fs.String("widths", "76", "base64 line widths, used in turn, comma-separated")
	seed := fs.Uint64("seed", 1, "seed of the per-copy parts")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" {
		fmt.Fprintln(stderr, "milterbench worm: -dir is required")
		return 2
	}
	var widths []int
	for _, w := range strings.Split(*widthList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(w))
		if err != nil || n < 4 || n > 998 {
			fmt.Fprintf(stderr, "milterbench worm: bad width %q\n", w)
			return 2
		}
		widths = append(widths, n)
	}
	err := loadgen.GenerateWorm(loadgen.WormOptions{Dir: *dir, Count: *count, Payload: *payload, Size: *size, Widths: widths, Seed: *seed, Vary: *vary})
	if err != nil {
		fmt.Fprintf(stderr, "milterbench worm: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "milterbench worm: wrote %d copies of worm %d (base64 wrapped at %s) to %s\n", *count, *payload, *widthList, *dir)
	return 0
}

// parsePIDs reads -pid: process ids separated by commas or blanks, or the
// name of a pid file (one or more ids in it).
func parsePIDs(v string) ([]int, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	text := v
	if _, err := strconv.Atoi(strings.Fields(strings.ReplaceAll(v, ",", " "))[0]); err != nil {
		b, err := os.ReadFile(v)
		if err != nil {
			return nil, err
		}
		text = string(b)
	}
	var pids []int
	for _, f := range strings.Fields(strings.ReplaceAll(text, ",", " ")) {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a process id", f)
		}
		pids = append(pids, n)
	}
	return pids, nil
}
