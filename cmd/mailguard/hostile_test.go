package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// checkConfig runs check-config, failing the test if it does not end
// within a few seconds (a FIFO once made it wait forever).
func checkConfig(t *testing.T, file string) (int, string) {
	t.Helper()
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errOut := runCLI("check-config", "--config", file)
		done <- result{code, out, errOut}
	}()
	select {
	case r := <-done:
		return r.code, r.out + r.err
	case <-time.After(10 * time.Second):
		t.Fatalf("check-config --config %s did not finish", file)
	}
	return 0, ""
}

// Files that are not what they should be get a clear error at once: a
// FIFO (which returns EOF, or never answers) as the configuration or a
// data file, a file with a byte-order mark, an empty signature file, and
// a large garbage file, whose problems are bounded.
func TestHostileFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	conf := func(name, text string) string {
		path := filepath.Join(dir, name)
		writeFile(t, path, text)
		return path
	}
	writeFile(t, filepath.Join(dir, "empty"), "# nothing yet\n")
	writeFile(t, filepath.Join(dir, "bom-users"), "\ufeffalice@example.edu /var/mail/alice\n")
	writeFile(t, filepath.Join(dir, "bom-blocklist"), "\ufeffalice@example.edu spammer@example.com\n")
	writeFile(t, filepath.Join(dir, "bom-sigs"), "\ufeffS = "+sobig+"\n")
	garbage := strings.Repeat("this is not a signature file at all\n", 100000)
	writeFile(t, filepath.Join(dir, "garbage"), garbage)
	cases := []struct {
		name, config, want string
	}{
		{"config is a FIFO", fifo, "not a regular file (a FIFO)"},
		{"signatures are a FIFO", conf("a.toml", "[virus]\nsignatures = \"fifo\"\n"), "a.toml:2: virus.signatures: open " + fifo + ": not a regular file (a FIFO)"},
		{"users are a FIFO", conf("b.toml", "filters = [\"quota\"]\n[quota]\nusers = \"fifo\"\n"), "not a regular file (a FIFO)"},
		{"empty signature file", conf("c.toml", "[virus]\nsignatures = \"empty\"\n"), "c.toml:2: virus.signatures: " + filepath.Join(dir, "empty") + " holds no signatures"},
		{"config with a BOM", conf("d.toml", "\ufefflisten = \"inet:127.0.0.1:1\"\n"), "d.toml:1: the file starts with a UTF-8 byte-order mark"},
		{"users with a BOM", conf("e.toml", "filters = [\"quota\"]\n[quota]\nusers = \"bom-users\"\n"), "bom-users:1: the file starts with a UTF-8 byte-order mark"},
		{"blocklist with a BOM", conf("f.toml", "filters = [\"senders\"]\n[senders]\nblocklist = \"bom-blocklist\"\n"), "bom-blocklist:1: the file starts with a UTF-8 byte-order mark"},
		{"signatures with a BOM", conf("g.toml", "[virus]\nsignatures = \"bom-sigs\"\n"), "bom-sigs:1: the file starts with a UTF-8 byte-order mark"},
		{"data file over max_file_size", conf("h.toml", "max_file_size = \"1M\"\n[virus]\nsignatures = \"garbage\"\n"), "file too large: 3600000 bytes, at most 1048576"},
		{"garbage", conf("i.toml", "[virus]\nsignatures = \"garbage\"\n"), "garbage: and 99980 more problems"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out := checkConfig(t, c.config)
			if code != 1 || !strings.Contains(out, c.want) {
				t.Fatalf("exit %d, want 1 and %q in:\n%s", code, c.want, out)
			}
			if lines := strings.Count(out, "\n"); lines > 25 {
				t.Errorf("%d lines of problems", lines)
			}
		})
	}
	if code, out := checkConfig(t, conf("j.toml", "[virus]\nsignatures = \"empty\"\nallow_empty = true\n")); code != 0 {
		t.Errorf("allow_empty: exit %d\n%s", code, out)
	}
}

// A corpus named through a symbolic link is read, not taken for empty; a
// FIFO named on the command line is refused, not waited on; and
// sigmine --check refuses to vouch for signatures against no mail.
func TestCorpusPaths(t *testing.T) {
	dir := corpus(t, true)
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCLI("scan", link)
	if code != 1 || !strings.Contains(out, "scanned 4 messages: 3 accepted, 1 rejected") || !strings.Contains(out, link+"/Maildir/.Junk/cur/") {
		t.Fatalf("scan through a link: exit %d\n%s", code, out)
	}
	fifo := filepath.Join(t.TempDir(), "fifo")
	syscall.Mkfifo(fifo, 0o600)
	done := make(chan string, 1)
	go func() { _, out, _ := runCLI("scan", fifo); done <- out }()
	select {
	case out := <-done:
		if !strings.Contains(out, "not a regular file (a FIFO)") {
			t.Errorf("scan of a FIFO:\n%s", out)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("scan of a FIFO hangs")
	}
	sigs := filepath.Join(t.TempDir(), "sigs")
	writeFile(t, sigs, "W = "+sobig+"\n")
	cleanLink := filepath.Join(t.TempDir(), "clean")
	os.Symlink(corpus(t, false), cleanLink)
	if code, out, errOut := runCLI("sigmine", "--check", "--signatures", sigs, "--clean", cleanLink); code != 0 || !strings.Contains(out, "OK") || !strings.Contains(out, "3") {
		t.Errorf("--check through a link: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := runCLI("sigmine", "--check", "--signatures", sigs, "--clean", t.TempDir()); code != 2 || strings.Contains(out, "OK") || !strings.Contains(errOut, "no messages found there") {
		t.Errorf("--check on an empty corpus: exit %d\n%s%s", code, out, errOut)
	}
}

// sigmine never claims what it did not prove: without clean mail it
// refuses, or with --no-clean says UNPROVEN and exits 1.
func TestSigmineNeedsCleanMail(t *testing.T) {
	dir := t.TempDir()
	samples := filepath.Join(dir, "samples")
	for i := 0; i < 5; i++ {
		writeFile(t, filepath.Join(samples, "w"+string(rune('a'+i))+".eml"), "Subject: w\n\n"+sobig+"\n")
	}
	if code, _, errOut := runCLI("sigmine", "--samples", samples); code != 2 || !strings.Contains(errOut, "--clean PATH is required") {
		t.Fatalf("without --clean: exit %d\n%s", code, errOut)
	}
	code, out, _ := runCLI("sigmine", "--samples", samples, "--no-clean")
	if code != 1 || !strings.Contains(out, "UNPROVEN") || strings.Contains(out, "no clean message") {
		t.Fatalf("--no-clean: exit %d\n%s", code, out)
	}
}

// An empty filter list runs, but check-config warns that nothing is
// filtered.
func TestEmptyFiltersWarned(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.toml")
	writeFile(t, path, "listen = \"inet:127.0.0.1:1\"\nfilters = []\n")
	code, out, errOut := runCLI("check-config", "--config", path)
	if code != 0 || !strings.Contains(out, "OK") || !strings.Contains(errOut, "warning: "+path+":2: filters = []: no filter runs") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
}

// check-config changes nothing on disk: it does not create the capture
// Maildir it checks, but still refuses one the daemon would refuse.
func TestCheckConfigCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.toml")
	writeFile(t, path, "filters = [\"capture\"]\n[capture]\nswitch = \"on\"\ndir = \"spool/copies\"\n")
	if code, out, errOut := runCLI("check-config", "--config", path); code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "spool")); !os.IsNotExist(err) {
		t.Fatalf("check-config created %s", filepath.Join(dir, "spool"))
	}
	os.MkdirAll(filepath.Join(dir, "spool", "copies"), 0o777)
	os.Chmod(filepath.Join(dir, "spool", "copies"), 0o777)
	if code, _, errOut := runCLI("check-config", "--config", path); code != 1 || !strings.Contains(errOut, "writable by group or others") {
		t.Fatalf("a world-writable capture dir: exit %d\n%s", code, errOut)
	}
}

// check-config reports every problem in one pass, in a postmaster's words:
// values of the wrong type, misspelt keys with a suggestion, bad values,
// and the files the sections name.
func TestCheckConfigEveryProblem(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.toml")
	writeFile(t, path, `drain_timeout = 30
max_recipients = "many"
listen = "tcp:1"
filters = ["virus", "quota", "senders"]
[log]
levl = "debug"
[virus]
signatures = "missing-signatures"
include_name = "yes"
[quota]
users = "users"
margin = 25
[senders]
blocklist = "missing-blocklist"
`)
	writeFile(t, filepath.Join(dir, "users"), "alice@example.edu /m/a quota=1G quota=2G\n")
	code, out, errOut := runCLI("check-config", "--config", path)
	if code != 1 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		`m.toml:1: drain_timeout: want a string in quotes, not a whole number`,
		`m.toml:2: max_recipients: want a whole number, not a string`,
		`m.toml:3: listen: "tcp:1": unknown socket type`,
		`m.toml:6: unknown key "log.levl" (did you mean "log.level"?)`,
		`m.toml:9: virus.include_name: want true or false, not a string`,
		`m.toml:12: quota.margin: want a size in quotes, such as "500K" or "25M", not a whole number`,
		`m.toml:8: virus.signatures: open ` + filepath.Join(dir, "missing-signatures") + `: no such file or directory`,
		`users:1: option quota given twice`,
		`m.toml:14: senders.blocklist: open ` + filepath.Join(dir, "missing-blocklist") + `: no such file or directory`,
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("missing %q in:\n%s", want, errOut)
		}
	}
	for _, goWords := range []string{"struct", "int64", "strconv", "toml: ", "decode"} {
		if strings.Contains(errOut, goWords) {
			t.Errorf("Go's words (%q) in:\n%s", goWords, errOut)
		}
	}
}
