package e2e

import (
	"bufio"
	"flag"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"mailguard/internal/loadgen"
	"mailguard/internal/testserver"
)

// The default run sends a short soak; scripts/soak sends 1,000,000
// messages through the same test (-soak.messages).
var (
	soakMessages    = flag.Int("soak.messages", 4000, "messages the soak sends (scripts/soak: 1,000,000)")
	soakConnections = flag.Int("soak.connections", 16, "milter connections at once in the soak")
	soakClients     = flag.Int("soak.clients", loadgen.MixClients, "client addresses the ordinary sessions come from, in turn (at most 16777216)")
)

// soakGrowth bounds resident memory at the end against the sample after
// the first tenth of the run, when the first tenth saw every client of the
// mix once (a million messages with 20,000 clients: 31,000 sessions).
const (
	soakGrowth = 1.10
	// A shorter run (the default test run, under the race detector) has
	// not reached its working set after a tenth: it gets room to grow.
	soakShortGrowth = 2.0
	// The peak may grow more than the resident memory at the end: two
	// million-message runs on the loaded 2-core machine ended 6% and 24%
	// over the first tenth's peak.
	soakPeakGrowth = 2.0
)

// TestSoak sends mixed traffic (clean, infected, EICAR through a real
// clamd, over-quota and blocked recipients, refused attachments, clients
// on a DNS blocklist served by a real dnsmasq, clients over a concurrency
// limit, a spreading worm, captured mail, transactions aborted and
// connections dropped mid-message, several messages per connection)
// through `mailguard serve` with every filter on. Every message's verdict
// is known beforehand: none may be wrong, none may fail, the daemon may
// log no error, and its memory and open files at the end must be within
// 10% of where they were after the first tenth of the run.
func TestSoak(t *testing.T) {
	n := *soakMessages
	clamd := testserver.StartClamd(t, testserver.ClamdOptions{})
	dns := testserver.StartDNS(t, loadgen.MixZone, loadgen.MixListed())
	dir := t.TempDir()
	mix, err := loadgen.NewMix(dir, loadgen.MixServers{Clamd: clamd.Address(), ClamdName: testserver.EICARName, DNS: dns.Server()})
	if err != nil {
		t.Fatal(err)
	}
	mix.Clients = *soakClients
	sessions, planned := 0, 0
	for planned < n {
		planned += len(mix.Session(sessions).Messages)
		sessions++
	}

	sock := filepath.Join(dir, "milter.sock")
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := fmt.Sprintf("listen = %q\n", "unix:"+sock) + mix.Config(httpAddr)
	cfgFile := filepath.Join(dir, "mailguard.toml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// A million messages log hundreds of thousands of decisions: into a
	// file, not the test's memory.
	logFile, err := os.Create(filepath.Join(dir, "mailguard.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(binDir, "mailguard"), "serve", "--config", cfgFile, "--allow-root")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	waitForSocket(t, sock, logFile.Name())

	res, err := loadgen.Run(loadgen.Options{Network: "unix", Address: sock, Plan: mix.Session, Sessions: sessions,
		Concurrency: *soakConnections, PIDs: []int{cmd.Process.Pid}, SampleEvery: max(1, planned/10), Timeout: time.Minute,
		OnSample: func(s loadgen.Sample) {
			t.Logf("  %s: %d messages, rss %d kB, open files %d", time.Now().Format(time.TimeOnly), s.Messages, s.RSSKB, s.FDs)
		}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		t.Fatalf("mailguard exited during the soak:\n%s", logTail(logFile.Name(), 30))
	default:
	}

	t.Logf("soak: %d messages (and %d parallel connections) in %d sessions, %d connections at once: %s, %.0f messages/s",
		res.Messages, res.Probes, sessions, *soakConnections, res.Elapsed.Round(time.Second), res.Rate())
	first, end := res.Samples[min(1, len(res.Samples)-1)], res.Samples[len(res.Samples)-1]
	mostFDs := 0
	for _, s := range res.Samples {
		t.Logf("  after %8d messages: rss %7d kB  (peak so far %7d kB)  open files %4d", s.Messages, s.RSSKB, s.PeakKB, s.FDs)
		mostFDs = max(mostFDs, s.FDs)
	}
	t.Logf("soak: after the first tenth: rss %d kB, peak %d kB, %d open files; at the end: rss %d kB (%+.1f%%), peak %d kB (%+.1f%%), %d open files (most %d)",
		first.RSSKB, first.PeakKB, first.FDs, end.RSSKB, growthPercent(first.RSSKB, end.RSSKB), end.PeakKB, growthPercent(first.PeakKB, end.PeakKB), end.FDs, mostFDs)
	t.Logf("soak: verdicts (class | expected | got | count):\n%s", verdictTable(res))
	t.Logf("soak: %d wrong verdicts, %d errors", res.Wrong, res.Errors)

	if res.Errors > 0 {
		t.Errorf("%d messages failed; first: %s", res.Errors, res.FirstError)
	}
	if res.Wrong > 0 {
		t.Errorf("%d wrong verdicts; first: %s", res.Wrong, res.FirstWrong)
	}
	if res.Messages != planned {
		t.Errorf("%d messages got a verdict, %d planned", res.Messages, planned)
	}
	if problem := loadgen.MixCheck(res); problem != "" {
		t.Error(problem)
	}
	// Every captured message is in the capture Maildir, and nothing else.
	captured := 0
	for o, c := range res.Table {
		if o.Class == "captured" && o.Got == "accept" {
			captured += c
		}
	}
	copies, err := os.ReadDir(filepath.Join(dir, "capture", "new"))
	if err != nil && captured > 0 {
		t.Error(err)
	}
	if len(copies) != captured {
		t.Errorf("%d copies in the capture Maildir, %d messages captured", len(copies), captured)
	}
	// The daemon's own counters tell the same story.
	metrics := scrapeMetrics(t, httpAddr)
	t.Logf("soak: the daemon's counters:\n%s", metricsLines(metrics, "mailguard_messages_total", "mailguard_verdicts_total", "mailguard_capture_writes_total", "mailguard_filter_errors"))
	for series, want := range countersFromTable(res) {
		if got := metrics[series]; got != float64(want) {
			t.Errorf("%s is %.0f; the verdicts say %d", series, got, want)
		}
	}
	if bad := daemonErrors(t, logFile.Name()); len(bad) > 0 {
		t.Errorf("mailguard logged %d errors, first: %s", len(bad), bad[0])
	}

	// The caches per client (DNS answers, rate limit windows) fill while
	// the first round of clients comes: a run whose first tenth is
	// shorter has not reached its working set there.
	growth := soakGrowth
	if sessions/10 < mix.Clients {
		growth = soakShortGrowth
		t.Logf("soak: the first tenth (%d sessions) did not see all %d clients, so the caches per client were still filling: resident memory and open files at the end may be %.0f%% over it (%.0f%% for a run whose first tenth sees them all)",
			sessions/10, mix.Clients, 100*(soakShortGrowth-1), 100*(soakGrowth-1))
	} else {
		t.Logf("soak: resident memory and open files at the end may be %.0f%% over the first tenth", 100*(soakGrowth-1))
	}
	// Resident memory at the end against the first tenth: the issue's
	// measure. The peak (VmHWM) is reported; it moves with the machine's
	// load (a garbage collection that gets little CPU lets the heap run
	// past its goal), so it is only held under soakPeakGrowth, against
	// memory that runs away.
	if float64(end.RSSKB) > growth*float64(first.RSSKB) {
		t.Errorf("resident memory grew: %d kB after the first tenth, %d kB at the end; allowed %.0f%% more",
			first.RSSKB, end.RSSKB, 100*(growth-1))
	}
	if float64(end.PeakKB) > soakPeakGrowth*float64(first.PeakKB) {
		t.Errorf("peak resident memory grew: %d kB after the first tenth, %d kB at the end; allowed %.0f%% more",
			first.PeakKB, end.PeakKB, 100*(soakPeakGrowth-1))
	}
	// Open files: the listener, logs, clamd's pooled connections, the
	// DNS and HTTP sockets; a few more at the end is noise, not a leak.
	if float64(end.FDs) > growth*float64(first.FDs) {
		t.Errorf("open files grew: %d after the first tenth, %d at the end", first.FDs, end.FDs)
	}
}

func growthPercent(from, to int) float64 { return 100 * (float64(to)/float64(from) - 1) }

func waitForSocket(t *testing.T, sock, log string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
	}
	t.Fatalf("mailguard did not listen on %s:\n%s", sock, logTail(log, 30))
}

// verdictTable prints the run's verdict table, one line per class,
// expected and actual reply.
func verdictTable(res *loadgen.Result) string {
	// The blocklist's reply names the client: one row for all clients.
	table := map[loadgen.Outcome]int{}
	client := regexp.MustCompile(`\[[0-9.]+\]`)
	for o, n := range res.Table {
		o.Expect, o.Got = client.ReplaceAllString(o.Expect, "[CLIENT]"), client.ReplaceAllString(o.Got, "[CLIENT]")
		table[o] += n
	}
	rows := slices.SortedFunc(maps.Keys(table), func(a, b loadgen.Outcome) int {
		return strings.Compare(a.Class+"\x00"+a.Expect+"\x00"+a.Got, b.Class+"\x00"+b.Expect+"\x00"+b.Got)
	})
	var b strings.Builder
	for _, o := range rows {
		mark := ""
		if o.Expect != "" && o.Expect != o.Got {
			mark = "  WRONG"
		}
		expect := o.Expect
		if expect == "" {
			expect = "(see below)"
		}
		fmt.Fprintf(&b, "  %-40s | %-50s | %-50s | %8d%s\n", o.Class, expect, o.Got, table[o], mark)
	}
	fmt.Fprintf(&b, "  (%s: exactly %d copies pass, every later one is held)\n", loadgen.ClassOutbreak, loadgen.MixMinNetworks)
	return b.String()
}

// daemonErrors are the daemon's log lines at level ERROR or of a filter
// that failed.
func daemonErrors(t *testing.T, log string) []string {
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var bad []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.Contains(l, "level=ERROR") || strings.Contains(l, "filter failed") || strings.Contains(l, "panic") {
			bad = append(bad, l)
		}
	}
	return bad
}

func logTail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// countersFromTable is what the daemon's counters must say after the run,
// from the verdicts the load tool saw.
func countersFromTable(res *loadgen.Result) map[string]int {
	verdicts := func(filter, outcome string) string {
		return fmt.Sprintf("mailguard_verdicts_total{filter=%q,outcome=%q}", filter, outcome)
	}
	want := map[string]int{"mailguard_messages_total": res.Messages, `mailguard_capture_writes_total{result="failed"}`: 0}
	for o, n := range res.Table {
		if o.Class == "parallel connection" {
			continue
		}
		var series []string
		switch got := o.Got; {
		case got == "accept" || strings.HasSuffix(got, "; accept"):
			series = append(series, verdicts("", "accepted"))
			if o.Class == "captured" {
				series = append(series, `mailguard_capture_writes_total{result="written"}`)
			}
		case got == loadgen.VerdictAborted || got == loadgen.VerdictHungUp,
			got == loadgen.ReplyMailboxFull, got == loadgen.ReplySender && o.Class == "blocked sender":
			// Ended before the data: every recipient refused, or the
			// MTA gave up.
			series = append(series, verdicts("", "aborted"))
		case got == loadgen.ReplyVirus:
			series = append(series, verdicts("virus", "rejected"))
		case strings.HasPrefix(got, loadgen.ReplyClamd):
			series = append(series, verdicts("clamav", "rejected"))
		case got == loadgen.ReplyAttachment:
			series = append(series, verdicts("attachments", "rejected"))
		case got == loadgen.ReplySender:
			series = append(series, verdicts("senders", "rejected"))
		case got == loadgen.ReplyHeld:
			series = append(series, verdicts("outbreak", "tempfailed"))
		case strings.HasPrefix(o.Class, "refused client"):
			series = append(series, verdicts("access", "rejected"))
		}
		for _, s := range series {
			want[s] += n
		}
	}
	return want
}

// scrapeMetrics reads the daemon's metrics: series → value.
func scrapeMetrics(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); i > 0 && err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// metricsLines prints the series whose names start with one of prefixes.
func metricsLines(m map[string]float64, prefixes ...string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		for _, p := range prefixes {
			if strings.HasPrefix(k, p) {
				fmt.Fprintf(&b, "  %s %.0f\n", k, m[k])
				break
			}
		}
	}
	return b.String()
}
