package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"mailguard/internal/loadgen"
	"mailguard/internal/testserver"
)

const sobig = "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDyapmmaODQsIBgQs2y6QQgDAPhI7E3TNE3"

func runCLI(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// corpus lays out what a postmaster scans: loose .eml files and a Maildir
// with a subfolder, a tmp/ file still being written, and Dovecot's files.
func corpus(t *testing.T, infected bool) string {
	dir := t.TempDir()
	clean := "From: a@example.org\nSubject: hello\n\nnothing to see\n"
	writeFile(t, filepath.Join(dir, "loose.eml"), clean)
	writeFile(t, filepath.Join(dir, "Maildir", "cur", "1.host:2,S"), clean)
	writeFile(t, filepath.Join(dir, "Maildir", "new", "2.host"), clean)
	writeFile(t, filepath.Join(dir, "Maildir", "tmp", "3.host"), "Subject: partial\n\n"+sobig+"\n")
	writeFile(t, filepath.Join(dir, "Maildir", "maildirsize"), "1000S\n10 1\n")
	writeFile(t, filepath.Join(dir, "Maildir", "dovecot-uidlist"), "3 V1 N1\n")
	if infected {
		writeFile(t, filepath.Join(dir, "Maildir", ".Junk", "cur", "4.host:2,"), "Subject: worm\n\nTVqQ\n"+sobig+"\nAAAA\n")
	}
	return dir
}

func TestScan(t *testing.T) {
	dir := corpus(t, false)
	code, out, _ := runCLI("scan", dir)
	if code != 0 || !strings.Contains(out, "scanned 3 messages: 3 accepted, 0 rejected, 0 rejected for some recipients, 0 errors") {
		t.Fatalf("clean corpus: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "2.host: accept\n") {
		t.Errorf("no accept line:\n%s", out)
	}
	if strings.Contains(out, "3.host") || strings.Contains(out, "maildirsize") || strings.Contains(out, "dovecot") {
		t.Errorf("scanned a file that is not a delivered message:\n%s", out)
	}

	dir = corpus(t, true)
	code, out, _ = runCLI("scan", dir)
	if code != 1 || !strings.Contains(out, "4.host:2,: reject 550 5.7.0 VIRUS FOUND (virus: WORM_SOBIG.B)") || !strings.Contains(out, "hits: virus:WORM_SOBIG.B=1") {
		t.Fatalf("infected corpus: exit %d\n%s", code, out)
	}

	code, out, _ = runCLI("scan", dir, filepath.Join(dir, "missing.eml"))
	if code != 2 || !strings.Contains(out, "missing.eml: error:") {
		t.Fatalf("missing file: exit %d\n%s", code, out)
	}
}

func TestScanWithConfig(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "sigs"), "LOCAL_SIG = nothing-like-this-in-mail-0123456789\n")
	writeFile(t, filepath.Join(dir, "m.toml"), "[virus]\nsignatures = \"sigs\"\n")
	writeFile(t, filepath.Join(dir, "msgs", "a.eml"), "Subject: x\n\nnothing-like-this-in-mail-0123456789\n")
	code, out, _ := runCLI("scan", "--config", filepath.Join(dir, "m.toml"), filepath.Join(dir, "msgs"))
	if code != 1 || !strings.Contains(out, "(virus: LOCAL_SIG)") {
		t.Fatalf("exit %d\n%s", code, out)
	}
}

// TestScanNeverCaptures: scanning with a configuration whose capture is
// switched on copies nothing.
func TestScanNeverCaptures(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "capture.on"), "")
	writeFile(t, filepath.Join(dir, "m.toml"), "filters = [\"virus\", \"capture\"]\n[capture]\nswitch = \"capture.on\"\ndir = \"copies\"\n")
	writeFile(t, filepath.Join(dir, "msgs", "a.eml"), "Subject: x\n\nhello\n")
	if code, out, _ := runCLI("scan", "--config", filepath.Join(dir, "m.toml"), filepath.Join(dir, "msgs")); code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "copies", "new")); len(entries) != 0 {
		t.Fatalf("scan wrote %d copies", len(entries))
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "sigs"), "GOOD =\n"+sobig+"\n")
	writeFile(t, filepath.Join(dir, "good.toml"), "listen = \"inet:127.0.0.1:8897\"\n[virus]\nsignatures = \"sigs\"\n")
	if code, out, errOut := runCLI("check-config", "--config", filepath.Join(dir, "good.toml")); code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("good config: exit %d\n%s%s", code, out, errOut)
	}

	// Logging to a syslog daemon that is not there is found now.
	writeFile(t, filepath.Join(dir, "nosyslog.toml"), "[virus]\nsignatures = \"sigs\"\n[log]\ntarget = \"syslog\"\nsyslog_socket = \""+filepath.Join(dir, "log")+"\"\n")
	if code, _, errOut := runCLI("check-config", "--config", filepath.Join(dir, "nosyslog.toml")); code != 1 || !strings.Contains(errOut, "nosyslog.toml:4: log.target = \"syslog\": dial unixgram "+filepath.Join(dir, "log")) {
		t.Fatalf("no syslog daemon: exit %d\n%s", code, errOut)
	}

	writeFile(t, filepath.Join(dir, "badsigs"), "ORPHAN_NAME =\n\nX = short\n")
	writeFile(t, filepath.Join(dir, "badsigs.toml"), "[virus]\nsignatures = \"badsigs\"\n")
	code, _, errOut := runCLI("check-config", "--config", filepath.Join(dir, "badsigs.toml"))
	if code != 1 || !strings.Contains(errOut, "badsigs:1: signature ORPHAN_NAME has no pattern") || !strings.Contains(errOut, "badsigs:3: signature X") {
		t.Fatalf("bad signatures: exit %d\n%s", code, errOut)
	}

	writeFile(t, filepath.Join(dir, "nosigs.toml"), "\n[virus]\nsignatures = \"absent\"\n")
	code, _, errOut = runCLI("check-config", "--config", filepath.Join(dir, "nosigs.toml"))
	if code != 1 || !strings.Contains(errOut, "nosigs.toml:3: virus.signatures:") {
		t.Fatalf("missing signature file: exit %d\n%s", code, errOut)
	}

	writeFile(t, filepath.Join(dir, "users"), "alice@example.edu /var/mail/alice\nbob@example.edu relative/path\nalice@example.edu /x\n")
	writeFile(t, filepath.Join(dir, "quota.toml"), "filters = [\"quota\"]\n[quota]\nusers = \"users\"\n")
	code, _, errOut = runCLI("check-config", "--config", filepath.Join(dir, "quota.toml"))
	if code != 1 || !strings.Contains(errOut, "users:2: maildir") || !strings.Contains(errOut, "users:3: alice@example.edu is listed twice") {
		t.Fatalf("bad user directory: exit %d\n%s", code, errOut)
	}
	writeFile(t, filepath.Join(dir, "nousers.toml"), "filters = [\"quota\"]\n")
	code, _, errOut = runCLI("check-config", "--config", filepath.Join(dir, "nousers.toml"))
	if code != 1 || !strings.Contains(errOut, "nousers.toml:1: filters: the quota filter needs [quota] users") {
		t.Fatalf("quota without users: exit %d\n%s", code, errOut)
	}

	if code, _, _ := runCLI("check-config"); code != 2 {
		t.Errorf("no --config: exit %d", code)
	}
}

func TestUsage(t *testing.T) {
	if code, out, _ := runCLI(); code != 2 || !strings.Contains(out, "mailguard serve") {
		t.Errorf("no args: exit %d\n%s", code, out)
	}
	if code, _, _ := runCLI("frobnicate"); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
	for _, cmd := range []string{"serve", "scan", "check-config", "version"} {
		if code, _, errOut := runCLI(cmd, "--help"); code != 0 || !strings.Contains(errOut, "Usage: mailguard "+cmd) {
			t.Errorf("%s --help: exit %d\n%s", cmd, code, errOut)
		}
	}
	if code, out, _ := runCLI("--version"); code != 0 || !strings.HasPrefix(out, "mailguard ") || !strings.Contains(out, "go1.") {
		t.Errorf("--version: %d %q", code, out)
	}
	if code, out, _ := runCLI("version"); code != 0 || !strings.HasPrefix(out, "mailguard ") {
		t.Errorf("version: exit %d %q", code, out)
	}
}

func TestSigmineCommand(t *testing.T) {
	dir := t.TempDir()
	samples, clean := filepath.Join(dir, "samples"), filepath.Join(dir, "clean")
	if err := loadgen.GenerateWorm(loadgen.WormOptions{Dir: samples, Count: 15, Payload: 3, Widths: []int{76, 72}}); err != nil {
		t.Fatal(err)
	}
	if err := loadgen.Generate(loadgen.GenerateOptions{Dir: clean, Count: 40, Size: 10000}); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI("sigmine", "--samples", samples, "--clean", clean, "--name", "WORM_X", "--max", "2")
	if code != 0 || !strings.Contains(out, "WORM_X.1 =") {
		t.Fatalf("sigmine: exit %d\n%s%s", code, out, errOut)
	}
	sigs := filepath.Join(dir, "sigs")
	writeFile(t, sigs, out)
	if code, out, _ := runCLI("sigmine", "--check", "--signatures", sigs, "--clean", clean, "--samples", samples); code != 0 || !strings.Contains(out, "OK:") {
		t.Fatalf("check: exit %d\n%s", code, out)
	}
	// The mined file, loaded by scan, refuses the samples and nothing clean.
	writeFile(t, filepath.Join(dir, "m.toml"), "[virus]\nsignatures = \"sigs\"\n")
	code, out, _ = runCLI("scan", "--config", filepath.Join(dir, "m.toml"), samples, clean)
	if code != 1 || !strings.Contains(out, "55 messages: 40 accepted, 15 rejected, 0 rejected for some recipients, 0 errors") {
		t.Fatalf("scan with mined signatures: exit %d\n%s", code, out)
	}
	writeFile(t, sigs, "COMMON = Content-Transfer-Encoding: base64\n")
	if code, out, _ := runCLI("sigmine", "--check", "--signatures", sigs, "--clean", clean); code != 1 || !strings.Contains(out, "FAIL: COMMON") {
		t.Fatalf("check of a bad signature: exit %d\n%s", code, out)
	}
	if code, _, _ := runCLI("sigmine"); code != 2 {
		t.Errorf("no samples: exit %d", code)
	}
}

// TestScanClamavAndAttachments: a postmaster checks an archive offline
// with both filters, against a running clamd.
func TestScanClamavAndAttachments(t *testing.T) {
	clamd := testserver.StartClamd(t, testserver.ClamdOptions{})
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "m.toml"), fmt.Sprintf("filters = [\"attachments\", \"clamav\"]\n[attachments]\nblock_names = [\"*.scr\"]\n[clamav]\naddress = %q\nclamd_config = %q\n", clamd.Address(), clamd.Conf))
	attach := func(name, data string) string {
		return "Subject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: application/octet-stream; name=" + name +
			"\nContent-Transfer-Encoding: base64\n\n" + base64.StdEncoding.EncodeToString([]byte(data)) + "\n--b--\n"
	}
	writeFile(t, filepath.Join(dir, "msgs", "clean.eml"), attach("notes.txt", "hello"))
	writeFile(t, filepath.Join(dir, "msgs", "eicar.eml"), attach("test.com", testserver.EICAR))
	writeFile(t, filepath.Join(dir, "msgs", "screensaver.eml"), attach("cute.scr", "harmless"))
	code, out, _ := runCLI("scan", "--config", filepath.Join(dir, "m.toml"), filepath.Join(dir, "msgs"))
	for _, want := range []string{
		"clean.eml: accept\n",
		"eicar.eml: reject 550 5.7.0 VIRUS FOUND: " + testserver.EICARName + " (clamav: " + testserver.EICARName + ")",
		"screensaver.eml: reject 550 5.7.0 Attachment refused: cute.scr (attachments: attachment \"cute.scr\": name matches *.scr)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	if code != 1 || t.Failed() {
		t.Fatalf("exit %d\n%s", code, out)
	}
}

// A scan with the live configuration leaves what the live daemons share
// alone: the rate counts in Redis are not written, and the same corpus
// scanned five times is judged the same way each time (before, the
// second scan was refused by the first one's counts, and so was the
// postmaster's next real client).
func TestScanLeavesSharedCountersAlone(t *testing.T) {
	redis := testserver.StartRedis(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "mailguard.toml")
	writeFile(t, conf, `filters = ["ratelimit"]
[ratelimit]
backend = "`+redis.URL()+`"
[[ratelimit.rule]]
name = "msg"
event = "message"
key = "client"
limit = 3
window = "1h"
`)
	captured := filepath.Join(dir, "capture")
	for i := range 3 {
		writeFile(t, filepath.Join(captured, "new", fmt.Sprintf("%d.host", i)),
			"X-Envelope-Client: client.example.org [192.0.2.7]\nX-Envelope-From: <a@example.org>\nX-Envelope-To: <u@example.edu>\nSubject: hi\n\nhello\n")
	}
	var first string
	for i := range 5 {
		code, out, errOut := runCLI("scan", "--config", conf, captured)
		if code != 0 || !strings.Contains(out, "scanned 3 messages: 3 accepted") {
			t.Fatalf("scan %d: exit %d\n%s%s", i+1, code, out, errOut)
		}
		if i == 0 {
			first = out
			if !strings.Contains(errOut, "counted in memory of this scan (Redis at 127.0.0.1:") {
				t.Errorf("scan does not say where it counts:\n%s", errOut)
			}
		} else if out != first {
			t.Fatalf("scan %d judged differently:\n%s\nfirst:\n%s", i+1, out, first)
		}
	}
	if keys := redisKeys(t, redis.URL()); keys != 0 {
		t.Fatalf("the scans wrote %d keys into the live daemons' Redis", keys)
	}
}

// redisKeys counts the keys in the Redis database url names.
func redisKeys(t *testing.T, url string) int64 {
	t.Helper()
	opts, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := goredis.NewClient(opts)
	defer c.Close()
	n, err := c.DBSize(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// As root, serve with a configuration file refuses to start unless told
// to, and says how to run unprivileged; the built-in defaults (a trial on
// loopback) start.
func TestServeRefusesRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root") // CI runs as root
		}
		t.Skip("needs root")
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "m.toml"), "listen = \"unix:"+filepath.Join(dir, "s")+"\"\n")
	type result struct {
		code   int
		errOut string
	}
	done := make(chan result, 1)
	go func() {
		code, _, errOut := runCLI("serve", "--config", filepath.Join(dir, "m.toml"))
		done <- result{code, errOut}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("serve with a configuration file runs as root")
	}
	code, errOut := r.code, r.errOut
	if code != 1 || !strings.Contains(errOut, "refusing to run as root") || !strings.Contains(errOut, "runuser -u mailguard") || !strings.Contains(errOut, "--allow-root") {
		t.Fatalf("serve as root: exit %d\n%s", code, errOut)
	}
}

// A scan that finds no message (an empty or mistyped folder) fails: it
// must not pass for a clean corpus that refuses nothing.
func TestScanOfNothingFails(t *testing.T) {
	empty := t.TempDir()
	code, out, errOut := runCLI("scan", empty)
	if code != 2 || !strings.Contains(errOut, "no message found in "+empty) || !strings.Contains(out, "scanned 0 messages") {
		t.Fatalf("scan of nothing: exit %d\n%s%s", code, out, errOut)
	}
	os.MkdirAll(filepath.Join(empty, "new"), 0o755)
	if code, out, errOut := runCLI("scan", empty); code != 2 {
		t.Fatalf("scan of an empty Maildir: exit %d\n%s%s", code, out, errOut)
	}
}
