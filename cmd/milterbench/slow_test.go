package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all"
	"mailguard/internal/milterdoor"
	"mailguard/internal/milterdoor/doortest"
	"mailguard/internal/pipeline"
)

// startVirusDoor serves the bundled signatures' virus filter on a
// loopback port.
func startVirusDoor(t *testing.T, opts milterdoor.Options) string {
	t.Helper()
	cfg, err := filters.Parse("m.toml", []byte("[virus]\nsignatures = \"../../etc/signatures\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := filters.Build(cfg, pipeline.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Retire) // after the door's shutdown
	_, addr := doortest.Serve(t, p, opts)
	return "inet:" + addr
}

func TestSlowUsage(t *testing.T) {
	for args, want := range map[string]int{"slow": 2, "slow help": 0, "slow sideways": 2, "slow memory -n 5": 2, "slow load": 2} {
		if code, out, errOut := runCmd(strings.Fields(args)...); code != want {
			t.Errorf("%s: exit %d, want %d\n%s%s", args, code, want, out, errOut)
		}
	}
}

func TestSlowLoadAndLoris(t *testing.T) {
	const sobig = "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3"
	addr := startVirusDoor(t, milterdoor.Options{NegotiationTimeout: 300 * time.Millisecond, IdleTimeout: 500 * time.Millisecond})
	corpus := filepath.Join(t.TempDir(), "c")
	if code, _, errOut := runCmd("gen", "-dir", corpus, "-count", "10", "-size", "3000", "-infect", sobig, "-infect-every", "5"); code != 0 {
		t.Fatal(errOut)
	}
	code, out, errOut := runCmd("slow", "load", "-milter", addr, "-corpus", corpus, "-c", "10", "-per-conn", "2",
		"-gap-min", "1ms", "-gap-max", "10ms", "-reject", sobig, "-fast-n", "10", "-slow-only", "10ms", "-fast-pause", "1ms",
		"-pid", strconv.Itoa(os.Getpid()), "-max-ratio", "1000")
	if code != 0 || !strings.Contains(out, "slow verdicts: 550 5.7.0=4 accept=16; wrong 0; errors 0") || !strings.Contains(out, "latency ratio") {
		t.Fatalf("slow load: exit %d\n%s%s", code, out, errOut)
	}
	// Every message expected refused: the accepted ones are wrong.
	if code, out, _ := runCmd("slow", "load", "-milter", addr, "-corpus", corpus, "-c", "2", "-per-conn", "1",
		"-gap-min", "1ms", "-gap-max", "2ms", "-reject", "Please find the report", "-fast-n", "2", "-slow-only", "1ms", "-fast-pause", "1ms"); code != 1 {
		t.Fatalf("wrong verdicts passed: exit %d\n%s", code, out)
	}
	code, out, errOut = runCmd("slow", "loris", "-milter", addr, "-corpus", corpus, "-gap", "50ms", "-limit", "2s", "-fast-n", "5")
	for _, want := range []string{"negotiation   1 closed", "mid-packet    1 closed", "mid-body      1 closed", "body packets  none closed", "errors 0"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("slow loris: exit %d, want %q\n%s%s", code, want, out, errOut)
		}
	}
}
