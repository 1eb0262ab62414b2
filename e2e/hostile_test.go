package e2e

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mailguard/internal/hostilemail"
	"mailguard/internal/testserver"
)

// The hostile corpus goes through a real Postfix to mailguard with every
// filter on. MAILGUARD_HOSTILE_FULL=1 (scripts/hostile) sends it at full
// size: a 50 MiB body, a 30 MiB attachment.
func hostileOptions() hostilemail.Options {
	o := hostilemail.Options{Local: "user@example.edu", Remote: "bulk.example", Signature: sobig, Blocked: "news@pest.example", Virus: testserver.EICAR}
	if os.Getenv("MAILGUARD_HOSTILE_FULL") != "" {
		return hostilemail.Full(o)
	}
	return hostilemail.Defaults(o)
}

// hostileReplies is the reply each message of the corpus must get, and why.
// Postfix's defaults apply but for message_size_limit and
// virtual_mailbox_limit (64 MiB, so a 50 MB body reaches mailguard) and
// every domain but example.edu going to discard(8).
var hostileReplies = map[string]string{
	"clean-first": hostileOK,
	// attachments: max_depth 20, max_parts 1000; on_limit = reject.
	"mime-nest-200":   hostileTooComplex,
	"rfc822-nest-200": hostileTooComplex,
	"parts-5000":      hostileTooComplex,
	// What a mail client would show is checked; MIME the parser cannot
	// follow (a boundary longer than its 4 KiB buffer) is on_malformed:
	// accept, logged and counted.
	"boundary-broken": hostileOK,
	"rfc2231-10000":   hostileOK,
	"encoding-junk":   hostileOK,
	// virus: the signature line, however deep its part.
	"worm-nested-19": "RCPT 250 2.1.5 x1; END 550 5.7.0 VIRUS FOUND",
	// clamav: clamd finds its test file however deep (within its own
	// MaxRecursion, 17).
	"virus-nested-15": "RCPT 250 2.1.5 x1; END 550 5.7.0 VIRUS FOUND: " + testserver.EICARName,
	// Postfix keeps header_size_limit (100 KiB) of a header section and
	// drops the rest of it.
	"header-line-1m":   hostileOK,
	"header-folded-1m": hostileOK,
	// attachments: 10,000 lines of one header section; Postfix passes
	// them all, its limit counts bytes.
	"header-fields": hostileTooComplex,
	// attachments: under the limits, the name after 9,000 fields is read.
	"part-header-9000": "RCPT 250 2.1.5 x1; END 550 5.7.0 Attachment refused: setup.exe",
	"body-line-1m":     hostileOK,
	"nul-bytes":        hostileOK,
	"8bit-junk":        hostileOK,
	"bare-line-ends":   hostileOK,
	"header-only":      hostileOK,
	// senders: 32 header From: addresses are checked, the blocked one
	// is the 10,000th (and Postfix cut the header before it).
	"from-10000":   hostileOK,
	"from-blocked": "RCPT 250 2.1.5 x1; END 550 5.7.1 Sender blocked by recipient",
	// clamav: max_size 25 MiB, on_oversize = accept (delivered
	// unscanned, counted); virus still searches all of it.
	"big-body":           hostileOK,
	"big-body-worm-last": "RCPT 250 2.1.5 x1; END 550 5.7.0 VIRUS FOUND",
	"big-attachment":     hostileOK,
	"big-attachment-exe": "RCPT 250 2.1.5 x1; END 550 5.7.0 Attachment refused: setup.exe",
	// Postfix: message_size_limit, at MAIL FROM.
	"size-declared-100m": "MAIL 552 5.3.4 Message size exceeds fixed limit",
	// attachments reads a zip's names only: declared sizes and what the
	// content inflates to do not matter (clamd unpacks within its own
	// limits); nested zips are not opened.
	"zip-declared-huge":   hostileOK,
	"zip-deflate-bomb":    hostileOK,
	"zip-nested-20":       hostileOK,
	"zip-traversal-names": hostileOK,
	"zip-exe":             "RCPT 250 2.1.5 x1; END 550 5.7.0 Attachment refused: files.zip",
	// attachments: a zip whose names cannot all be read (more than
	// 10,000, or no central directory) may hide a refused one: on_limit.
	"zip-names":     hostileTooComplex,
	"zip-truncated": hostileTooComplex,
	// Postfix: smtpd_recipient_limit (1000), 452 for the rest.
	"rcpt-many":      hostileManyRecipients(),
	"addr-traversal": "RCPT 250 2.1.5 x4; END 250 2.0.0",
	// mailguard: 254 bytes per address (RFC 5321).
	"addr-long-sender-300": "MAIL 501 5.1.7 Sender address too long",
	"addr-long-rcpt-300":   "RCPT 250 2.1.5 x1, 501 5.1.3 Recipient address too long x1; END 250 2.0.0",
	// Postfix: a command longer than line_length_limit (2048) is cut,
	// and what is left does not parse; so do NUL and CR.
	"addr-long-sender-4000": "MAIL 501 5.1.7 Bad sender address syntax",
	"addr-nul":              "MAIL 501 5.1.7 Bad sender address syntax",
	"addr-cr":               "MAIL 501 5.1.7 Bad sender address syntax",
	"addr-quoted":           "RCPT 250 2.1.5 x3; END 250 2.0.0",
	"addr-unicode":          "RCPT 250 2.1.5 x2; END 250 2.0.0",
	// Postfix (smtputf8_enable): no 8-bit address without SMTPUTF8.
	"addr-unicode-8bit": "MAIL 500 5.5.2 Error: bad UTF-8 syntax",
	"addr-routes":       "RCPT 250 2.1.5 x4; END 250 2.0.0",
	"addr-null-sender":  "RCPT 250 2.1.5 x3; END 250 2.0.0",
	"clean-last":        hostileOK,
}

// hostileManyRecipients is the reply to rcpt-many: Postfix takes 1,000
// and answers 452 to the rest (up to smtpd_recipient_overshoot_limit).
func hostileManyRecipients() string {
	return fmt.Sprintf("RCPT 250 2.1.5 x1000, 452 4.5.3 Error: too many recipients x%d; END 250 2.0.0", hostileOptions().Recipients-1000)
}

// The replies most messages get.
const (
	hostileOK         = "RCPT 250 2.1.5 x1; END 250 2.0.0"
	hostileTooComplex = "RCPT 250 2.1.5 x1; END 554 5.6.0 Message structure too complex to check"
)

// hostileConfig enables every filter; capture copies everything
// (refused mail too) into capture/, outbreak keeps samples in outbreak/.
func hostileConfig(clamd *testserver.Clamd) string {
	return `listen = "LISTEN"
filters = ["access", "ratelimit", "senders", "quota", "virus", "attachments", "outbreak", "clamav", "capture"]
[http]
listen = ""
[access]
deny = ["192.0.2.66", "helo:bad.example"]
[ratelimit]
[[ratelimit.rule]]
name = "per-sender"
event = "message"
key = "sender"
limit = 100000
window = "1m"
action = "tempfail"
[senders]
blocklist = "blocklist"
[quota]
users = "users"
[virus]
signatures = "signatures"
[attachments]
block_names = ["*.exe"]
block_double_extensions = true
block_disguised_executables = true
hashes = ["bad.hsb"]
[outbreak]
samples = "outbreak"
kinds = ["all"]
[clamav]
address = "` + clamd.Address() + `"
clamd_config = "` + clamd.Conf + `"
[capture]
switch = "capture.on"
dir = "capture"
include_rejected = true
`
}

// hostileFiles are the files the configuration names.
func hostileFiles(mail string) map[string]string {
	return map[string]string{
		"blocklist":  "user@example.edu @pest.example\n",
		"users":      "user@example.edu " + filepath.Join(mail, "user") + " quota=1G\n",
		"signatures": "WORM_SOBIG.B =\n" + sobig + "\n",
		"bad.hsb":    fmt.Sprintf("%x:%d:Feed.Test.File\n", sha256.Sum256([]byte(feedFile)), len(feedFile)),
		"capture.on": "",
	}
}

// hostilePostfix is the Postfix the corpus goes through: defaults but for
// a message size limit that lets 50 MB through, and other domains than
// example.edu discarded once accepted.
const hostilePostfix = `
message_size_limit = 67108864
virtual_mailbox_limit = 134217728
default_transport = discard:hostile test
`

// hostileDaemon is mailguard serve started with a wrapper (strace, prlimit).
type hostileDaemon struct {
	cmd  *exec.Cmd
	pid  int // mailguard's own, under the wrapper
	dir  string
	logs *lockedBuffer
	once sync.Once
	done chan struct{}
}

// startHostileDaemon writes config and files into dir (a folder a
// daemon before it may have used) and starts bin (mailguard) on port,
// under wrapper (a command line that ends by running the rest) with env
// added.
func startHostileDaemon(t *testing.T, bin string, port int, dir string, wrapper, env []string, config string, files map[string]string) *hostileDaemon {
	t.Helper()
	for name, content := range files {
		write(t, filepath.Join(dir, name), content)
	}
	cfg := filepath.Join(dir, "mailguard.toml")
	write(t, cfg, strings.ReplaceAll(config, "LISTEN", fmt.Sprintf("inet:127.0.0.1:%d", port)))
	args := append(append([]string{}, wrapper...), bin, "serve", "--config", cfg, "--allow-root")
	d := &hostileDaemon{cmd: exec.Command(args[0], args[1:]...), dir: dir, logs: &lockedBuffer{}, done: make(chan struct{})}
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.Dir = dir
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("mailguard log (last lines):\n%s", tail(d.logs.String()))
		}
	})
	waitForPort(t, port, "mailguard", d.logs.String)
	d.pid = d.findPid(t, bin)
	return d
}

// stop ends the daemon (SIGTERM, then SIGKILL after 15 s) and its wrapper.
func (d *hostileDaemon) stop() {
	d.once.Do(func() {
		// (A wrapper that is not mailguard itself, strace, ends with it.)
		if d.pid != 0 {
			syscall.Kill(d.pid, syscall.SIGTERM)
		} else {
			d.cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-d.done:
		case <-time.After(15 * time.Second):
			if d.pid != 0 {
				syscall.Kill(d.pid, syscall.SIGKILL)
			}
			d.cmd.Process.Kill()
			<-d.done
		}
	})
}

// findPid is mailguard's process id: the wrapper's own when it executed
// mailguard (prlimit), else its child's (strace).
func (d *hostileDaemon) findPid(t *testing.T, bin string) int {
	t.Helper()
	pid := d.cmd.Process.Pid
	for i := 0; i < 10; i++ {
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe == bin {
			return pid
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		f := strings.Fields(string(b))
		if len(f) == 0 {
			break
		}
		pid, _ = strconv.Atoi(f[0])
	}
	t.Fatalf("no mailguard process under %d", d.cmd.Process.Pid)
	return 0
}

// alive says whether the daemon's process still runs.
func (d *hostileDaemon) alive() bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.pid))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses; Z is a zombie.
	s := string(b)
	return !strings.HasPrefix(strings.TrimSpace(s[strings.LastIndexByte(s, ')')+1:]), "Z")
}

// memory returns the process's resident memory now and at its peak
// (VmRSS, VmHWM), in bytes.
func (d *hostileDaemon) memory(t *testing.T) (rss, peak int64) {
	t.Helper()
	return d.status(t, "VmRSS"), d.status(t, "VmHWM")
}

// status reads one figure in kB of /proc/PID/status, in bytes.
func (d *hostileDaemon) status(t *testing.T, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.pid))
	if err != nil {
		t.Fatalf("mailguard (pid %d) is gone: %v\n%s", d.pid, err, d.fatal())
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == field+":" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, d.pid)
	return 0
}

// fatal is the start of what the Go runtime said when it ended the
// process, if it did.
func (d *hostileDaemon) fatal() string {
	logs := d.logs.String()
	if i := strings.Index(logs, "fatal error"); i >= 0 {
		return logs[i:min(len(logs), i+2000)]
	}
	return tail(logs)
}

// resetPeak makes VmHWM the current resident memory (Linux's clear_refs
// "5"), so the next peak read is this message's.
func (d *hostileDaemon) resetPeak(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", d.pid), []byte("5"), 0); err != nil {
		t.Fatalf("reset the peak memory: %v", err)
	}
}

// hostileMemoryBound is the most resident memory mailguard may reach for
// any one message of the corpus: about 2.5 times the most measured (37
// MiB in one daemon that took the whole corpus; 136 MiB under the race
// detector, which shadows every byte; docs/reliability/hostile-input.md).
func hostileMemoryBound() int64 {
	if len(raceFlags) > 0 {
		return 384 << 20
	}
	return 96 << 20
}

// hostileSite is a clamd and a Postfix whose milter is mailguard on port,
// delivering user@example.edu into a Maildir with a quota.
type hostileSite struct {
	clamd *testserver.Clamd
	p     *postfix
	port  int
}

func startHostileSite(t *testing.T) *hostileSite {
	t.Helper()
	s := &hostileSite{clamd: testserver.StartClamd(t, testserver.ClamdOptions{}), port: freePort(t)}
	s.p = startPostfixConf(t, false, hostilePostfix, fmt.Sprintf("inet:127.0.0.1:%d", s.port), "user@example.edu")
	box := filepath.Join(s.p.mail, "user")
	for _, sub := range []string{"cur", "new", "tmp"} {
		os.MkdirAll(filepath.Join(box, sub), 0o700)
	}
	write(t, filepath.Join(box, "maildirsize"), "1073741824S,100000C\n0 0\n")
	exec.Command("chown", "-R", fmt.Sprintf("%d:%d", mailUID, mailGID), box).Run()
	return s
}

// daemon starts mailguard for the site, with every filter, in dir.
func (s *hostileSite) daemon(t *testing.T, bin, dir string, wrapper, env []string) *hostileDaemon {
	t.Helper()
	return startHostileDaemon(t, bin, s.port, dir, wrapper, env, hostileConfig(s.clamd), hostileFiles(s.p.mail))
}

// TestPostfixHostileInput: the hostile corpus through Postfix to mailguard
// with every filter on, then ten of the worst at once to a mailguard under
// a memory cap (one Postfix and one clamd for both).
func TestPostfixHostileInput(t *testing.T) {
	requireCommands(t, map[string]string{"strace": "strace", "prlimit": "util-linux"})
	site := startHostileSite(t)
	t.Run("corpus", func(t *testing.T) { hostileCorpus(t, site) })
	t.Run("ten at once under a memory cap", func(t *testing.T) { hostileUnderCap(t, site) })
}

// hostileCorpus sends the hostile corpus through Postfix to
// mailguard with every filter on: each message gets the reply stated in
// hostileReplies, mailguard's memory stays under a bound for each, the
// same process serves them all, and it writes nothing outside its capture
// and samples folders (every file system call it makes is traced), nor a
// file named after anything a message chose. With
// MAILGUARD_HOSTILE_FRESH=1 each message gets a daemon of its own, so
// each peak is that message's alone (the long run's table).
func hostileCorpus(t *testing.T, site *hostileSite) {
	fresh := os.Getenv("MAILGUARD_HOSTILE_FRESH") != ""
	bin, dir, traces := filepath.Join(binDir, "mailguard"), t.TempDir(), t.TempDir()
	var d *hostileDaemon
	start := func() {
		trace := filepath.Join(traces, fmt.Sprint(time.Now().UnixNano()))
		d = site.daemon(t, bin, dir, []string{"strace", "-f", "-qq", "-y", "--seccomp-bpf", "-e", "trace=" + tracedCalls, "-o", trace}, nil)
	}
	start()
	firstPid := d.pid
	o := hostileOptions()
	corpus := append(hostilemail.Corpus(o), hostilemail.Clean("clean-last", o.Local))
	type result struct {
		name, what, outcome string
		size, before, peak  int64
		took                time.Duration
	}
	var results []result
	delivered, copied := 0, 0
	for i, m := range corpus {
		want, ok := hostileReplies[m.Name]
		if !ok {
			t.Errorf("%s: no expected reply stated", m.Name)
		}
		if fresh && i > 0 {
			d.stop()
			start()
		}
		d.resetPeak(t)
		before, _ := d.memory(t)
		began := time.Now()
		tr := sendRaw(site.p.port, m)
		took := time.Since(began)
		_, peak := d.memory(t)
		got := tr.Outcome()
		results = append(results, result{m.Name, m.What, got, tr.Sent, before, peak, took})
		if got != want {
			t.Errorf("%s (%s):\n got %s\nwant %s", m.Name, m.What, got, want)
		}
		if peak > hostileMemoryBound() {
			t.Errorf("%s: mailguard's resident memory peaked at %d MiB, over %d MiB", m.Name, peak>>20, hostileMemoryBound()>>20)
		}
		if tr.Accepted() && tr.Rcpts[len(tr.Rcpts)-1].Code == 250 && m.To[len(m.To)-1] == o.Local {
			delivered++
		}
		if tr.End.Code != 0 && !hostileRefusedBeforeBody[m.Name] {
			copied++
		}
		if !d.alive() {
			t.Fatalf("mailguard died after %s:\n%s", m.Name, d.fatal())
		}
	}
	if !fresh && d.pid != firstPid {
		t.Errorf("mailguard's process changed: %d, then %d", firstPid, d.pid)
	}
	var table strings.Builder
	table.WriteString("| message | size | reply | mailguard's RSS before → peak | time |\n|---|---|---|---|---|\n")
	var worst int64
	for _, r := range results {
		fmt.Fprintf(&table, "| `%s`: %s | %s | %s | %d → %d MiB | %.1f s |\n", r.name, r.what, humanSize(r.size), r.outcome, r.before>>20, r.peak>>20, r.took.Seconds())
		worst = max(worst, r.peak)
	}
	t.Logf("replies and memory (race detector: %v, a daemon per message: %v):\n%s\nhighest peak: %d MiB", len(raceFlags) > 0, fresh, table.String(), worst>>20)

	// Every message accepted for the local mailbox is in it.
	if got := len(site.p.delivered(t, "user", delivered)); got != delivered {
		t.Errorf("%d messages delivered to user@example.edu, want %d", got, delivered)
	}
	d.stop()
	checkHostileFolders(t, dir, copied)
	entries, _ := os.ReadDir(traces)
	for i, e := range entries {
		// The traces are named by start time: with a daemon per message,
		// the i-th is the i-th message's.
		whose := "mailguard"
		if len(entries) == len(results) && len(entries) > 1 {
			whose = "the daemon of " + results[i].name
		}
		checkHostileTrace(t, filepath.Join(traces, e.Name()), dir, whose)
	}
	checkNoHostileNames(t, dir, site.p.dir, site.clamd.Dir)
}

// hostileRefusedBeforeBody are the messages refused at the end of their
// header, so capture has no body to copy (see capture's README).
var hostileRefusedBeforeBody = map[string]bool{
	"header-fields": true, // attachments: 10,000 header lines
	"from-blocked":  true, // senders: the header From:
}

// tracedCalls are the system calls that create, change or remove files.
const tracedCalls = "open,openat,openat2,creat,mkdir,mkdirat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,unlink,unlinkat,rmdir,truncate,chmod,fchmodat,chown,lchown,fchownat,mknod,mknodat,bind"

// checkHostileTrace reads strace's record of mailguard's file system calls:
// every one that could change a file must be under the capture or the
// samples folder (bind: the samples' control socket).
func checkHostileTrace(t *testing.T, trace, dir, whose string) {
	t.Helper()
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	allowed := []string{filepath.Join(dir, "capture"), filepath.Join(dir, "outbreak")}
	call := regexp.MustCompile(`^\d+ +(\w+)\((.*)\) += (-?\d+|\?)`)
	path := regexp.MustCompile(`(?:(\d+)<([^>]*)>, )?"((?:[^"\\]|\\.)*)"`)
	writes, checked, outside := 0, 0, 0
	for _, line := range strings.Split(string(b), "\n") {
		m := call.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name, args, ret := m[1], m[2], m[3]
		if strings.HasPrefix(ret, "-") {
			continue // failed: changed nothing
		}
		checked++
		if strings.HasPrefix(name, "open") || name == "creat" {
			if name != "creat" && !strings.Contains(args, "O_WRONLY") && !strings.Contains(args, "O_RDWR") && !strings.Contains(args, "O_CREAT") && !strings.Contains(args, "O_TRUNC") {
				continue // read only
			}
		}
		if name == "bind" && !strings.Contains(args, "AF_UNIX") {
			continue
		}
		writes++
		// Every path the call names (rename and link name two).
		var targets []string
		if name == "bind" {
			i := strings.Index(args, `sun_path="`)
			if i < 0 {
				continue
			}
			targets = append(targets, strings.SplitN(args[i+len(`sun_path="`):], `"`, 2)[0])
		} else {
			for _, pm := range path.FindAllStringSubmatch(args, -1) {
				target := pm[3]
				if !filepath.IsAbs(target) && pm[2] != "" {
					target = filepath.Join(pm[2], target)
				}
				targets = append(targets, target)
			}
		}
		ok := len(targets) > 0
		for _, target := range targets {
			if !filepath.IsAbs(target) {
				target = filepath.Join(dir, target) // relative to the daemon's folder, its working directory
			}
			in := false
			for _, a := range allowed {
				in = in || target == a || strings.HasPrefix(target, a+"/")
			}
			ok = ok && in
		}
		if !ok {
			outside++
			t.Errorf("mailguard changed a file outside its folders: %s", line)
		}
	}
	t.Logf("%s: file system calls traced: %d, %d of them changing files, %d of those outside capture/ and outbreak/", whose, checked, writes, outside)
	if writes == 0 {
		t.Errorf("no file writes traced (the trace is broken, or capture wrote nothing):\n%s", tail(string(b)))
	}
}

// maildirName is a name mailguard gives a file it writes: a Maildir
// unique name (time, process, counter, host), nothing a message chose.
var maildirName = regexp.MustCompile(`^[0-9]+\.M[0-9]+P[0-9]+Q[0-9]+\.[A-Za-z0-9.-]+,S=[0-9]+$`)

// checkHostileFolders: the capture Maildir holds tmp/, new/, cur/ and
// nothing else, tmp/ is empty (no partial copy), and every copy has a
// Maildir name; the samples folder likewise.
func checkHostileFolders(t *testing.T, dir string, want int) {
	t.Helper()
	for _, folder := range []string{"capture", "outbreak"} {
		entries, err := os.ReadDir(filepath.Join(dir, folder))
		if err != nil {
			t.Errorf("%s: %v", folder, err)
			continue
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Logf("%s/: %s", folder, strings.Join(names, " "))
		for _, e := range entries {
			switch e.Name() {
			case "tmp", "new", "cur":
			case "control": // the samples' control socket
				if folder != "outbreak" {
					t.Errorf("%s/control", folder)
				}
			default:
				t.Errorf("%s/ holds %q", folder, e.Name())
			}
		}
	}
	tmp, _ := os.ReadDir(filepath.Join(dir, "capture", "tmp"))
	if len(tmp) != 0 {
		t.Errorf("%d partial copies left in capture/tmp", len(tmp))
	}
	copies, _ := os.ReadDir(filepath.Join(dir, "capture", "new"))
	for _, c := range copies {
		if !maildirName.MatchString(c.Name()) {
			t.Errorf("capture/new/%q is no Maildir name", c.Name())
		}
	}
	if len(copies) != want {
		t.Errorf("capture/new/ holds %d copies, want one of each of the %d messages that reached their body's end", len(copies), want)
	}
}

// hostileNames are pieces of what the corpus's addresses and file names
// hold; no file anywhere under the test's folders may be named so.
var hostileNames = []string{"passwd", "shadow", "boot.ini", "reboot", "rm -rf", "evil", "setup.exe", "jörg", "system32"}

func checkNoHostileNames(t *testing.T, roots ...string) {
	t.Helper()
	files := 0
	for _, root := range roots {
		filepath.WalkDir(root, func(path string, e os.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			files++
			for _, h := range hostileNames {
				if strings.Contains(strings.ToLower(e.Name()), h) {
					t.Errorf("a file named after hostile input: %s", path)
				}
			}
			return nil
		})
	}
	t.Logf("%d files under mailguard's, Postfix's and clamd's folders, none named after hostile input", files)
}

func humanSize(n int64) string {
	switch {
	case n == 0:
		return "-"
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// hostileWorst are ten of the corpus's worst for memory, by the peaks a
// daemon of their own measured (docs/reliability/hostile-input.md).
var hostileWorst = []string{"header-fields", "big-attachment", "big-body", "big-body-worm-last", "big-attachment-exe",
	"zip-names", "parts-5000", "encoding-junk", "rfc2231-10000", "header-line-1m"}

// The memory cap of hostileUnderCap: GOMEMLIMIT, the Go runtime's soft
// goal, and RLIMIT_AS, the kernel's hard limit on address space (a cgroup
// v2 memory.max, systemd's MemoryMax=, is the one a site sets, but a
// test cannot count on one). Address space is more than resident
// memory: a Go process reserves some it never touches (see the docs).
const (
	hostileGoMemLimit = "96MiB"
	hostileAddressCap = 1536 << 20
)

// hostileUnderCap sends ten of the worst messages at once through
// Postfix to a mailguard under a memory cap: each gets its stated reply,
// the same process serves a plain message afterwards, and its peak
// resident memory is reported.
func hostileUnderCap(t *testing.T, site *hostileSite) {
	bin := hostilePlainBinary(t)
	goMemLimit, addressCap := hostileGoMemLimit, int64(hostileAddressCap)
	if v := os.Getenv("MAILGUARD_HOSTILE_GOMEMLIMIT"); v != "" {
		goMemLimit = v // "off" for none
	}
	if v := os.Getenv("MAILGUARD_HOSTILE_AS_MIB"); v != "" {
		n, _ := strconv.ParseInt(v, 10, 64)
		addressCap = n << 20
	}
	d := site.daemon(t, bin, t.TempDir(), []string{"prlimit", fmt.Sprintf("--as=%d", addressCap), "--"},
		[]string{"GOMEMLIMIT=" + goMemLimit})
	pid := d.pid
	idle, _ := d.memory(t)
	idleAS := d.status(t, "VmSize")
	o := hostileOptions()
	byName := map[string]hostilemail.Message{}
	for _, m := range hostilemail.Corpus(o) {
		byName[m.Name] = m
	}
	worst := hostileWorst
	if names := os.Getenv("MAILGUARD_HOSTILE_WORST"); names != "" {
		worst = strings.Split(names, ",") // to measure other mixes
	}
	var wg sync.WaitGroup
	outcomes := make([]string, len(worst))
	for i, name := range worst {
		m, ok := byName[name]
		if !ok {
			t.Fatalf("no message %q in the corpus", name)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			outcomes[i] = sendRaw(site.p.port, m).Outcome()
		}()
	}
	wg.Wait()
	_, peak := d.memory(t)
	for i, name := range worst {
		if outcomes[i] != hostileReplies[name] {
			t.Errorf("%s, one of ten at once:\n got %s\nwant %s", name, outcomes[i], hostileReplies[name])
		}
	}
	tr := sendRaw(site.p.port, hostilemail.Clean("after", o.Local))
	if !tr.Accepted() {
		t.Errorf("a plain message after the ten: %s", tr.Outcome())
	}
	if !d.alive() || d.pid != pid {
		t.Fatalf("mailguard (pid %d) did not survive:\n%s", pid, d.fatal())
	}
	t.Logf("ten at once under GOMEMLIMIT=%s and an address space cap of %d MiB: resident memory %d MiB idle, %d MiB at the peak; address space %d MiB idle, %d MiB at the peak",
		goMemLimit, addressCap>>20, idle>>20, peak>>20, idleAS>>20, d.status(t, "VmPeak")>>20)
}

// hostilePlainBinary is mailguard built as the Debian package builds it:
// without the race detector (whose shadow memory takes terabytes of
// address space, so no address space cap can hold it) and without cgo
// (with it, glibc reserves 64 MiB of address space per thread that
// allocates: an address space cap then measures threads, not memory).
func hostilePlainBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(binDir, "mailguard-static")
	plainBuild.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		build := exec.Command("go", "build", "-o", bin, "./cmd/mailguard")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		build.Dir = filepath.Dir(filepath.Dir(file))
		if out, err := build.CombinedOutput(); err != nil {
			plainErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if plainErr != nil {
		t.Fatal(plainErr)
	}
	return bin
}

var (
	plainBuild sync.Once
	plainErr   error
)
