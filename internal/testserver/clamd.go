package testserver

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// EICAR is the anti-virus test file every engine detects.
const EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// TestString is a byte string the test database detects anywhere.
// EICARName and TestStringName are what clamd reports finding (it marks
// signatures from a database of one's own ".UNOFFICIAL").
const (
	TestString     = "MAILGUARD-CLAMD-TEST-STRING-8d1f"
	eicarSig       = "Eicar-Test-Signature"
	testStringSig  = "Mailguard.Test.String"
	EICARName      = eicarSig + ".UNOFFICIAL"
	TestStringName = testStringSig + ".UNOFFICIAL"
)

// Clamd is a clamd with a signature database of its own (EICAR and
// TestString; no updater, no network) on a unix socket in the test's
// directory.
type Clamd struct {
	Dir    string
	Socket string
	Conf   string
	t      testing.TB
	proc   *process
}

// ClamdOptions tune the clamd.
type ClamdOptions struct {
	// StreamMaxLength is clamd's limit on one stream ("" is clamd's default).
	StreamMaxLength string
}

// StartClamd starts clamd and waits until it answers; it is stopped when
// the test ends.
func StartClamd(t testing.TB, opts ClamdOptions) *Clamd {
	t.Helper()
	Require(t, map[string]string{"clamd": "clamav-daemon"})
	dir, err := os.MkdirTemp("", "clamd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	db := filepath.Join(dir, "db")
	os.MkdirAll(db, 0o755)
	os.MkdirAll(filepath.Join(dir, "tmp"), 0o755)
	writeFile(t, filepath.Join(db, "test.hdb"), "44d88612fea8a8f36de82e1278abb02f:68:%s\n", eicarSig)
	writeFile(t, filepath.Join(db, "test.ndb"), "%s:0:*:%s\n", testStringSig, hex.EncodeToString([]byte(TestString)))
	c := &Clamd{Dir: dir, Socket: filepath.Join(dir, "clamd.sock"), Conf: filepath.Join(dir, "clamd.conf"), t: t}
	conf := "DatabaseDirectory " + db + "\nLocalSocket " + c.Socket + "\nFixStaleSocket yes\nForeground yes\n" +
		"LogFile " + filepath.Join(dir, "clamd.log") + "\nTemporaryDirectory " + filepath.Join(dir, "tmp") + "\nMaxThreads 4\n"
	if os.Geteuid() == 0 {
		conf += "User root\n"
	}
	if opts.StreamMaxLength != "" {
		conf += "StreamMaxLength " + opts.StreamMaxLength + "\n"
	}
	writeFile(t, c.Conf, "%s", conf)
	c.Start()
	t.Cleanup(c.Stop)
	return c
}

// Address is the clamav filter's address for this clamd.
func (c *Clamd) Address() string { return "unix:" + c.Socket }

// Start starts (or restarts) clamd and waits until it listens.
func (c *Clamd) Start() {
	c.t.Helper()
	c.proc = startProcess(c.t, "clamd", "-c", c.Conf)
	waitDial(c.t, c.proc, "unix", c.Socket, 90*time.Second)
}

// Stop stops clamd.
func (c *Clamd) Stop() {
	c.proc.stop()
	os.Remove(c.Socket)
}

// Hang stops clamd with SIGSTOP, as a clamd stuck in a scan or swapped
// out looks from outside: the kernel still accepts connections and
// buffers what is sent, but nothing is answered. Resume (or the end of
// the test) lets it go on.
func (c *Clamd) Hang() {
	c.t.Helper()
	if err := c.proc.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		c.t.Fatalf("SIGSTOP clamd: %v", err)
	}
	c.t.Cleanup(c.Resume) // before Stop, which a stopped clamd would not heed
}

// Resume continues a clamd stopped by Hang.
func (c *Clamd) Resume() {
	if !c.proc.exited() {
		c.proc.cmd.Process.Signal(syscall.SIGCONT)
	}
}
