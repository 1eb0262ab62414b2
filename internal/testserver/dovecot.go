package testserver

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// DovecotAuth is Dovecot's auth service alone (no mail protocols), its
// users in a passwd-file, answering userdb lookups on its auth-userdb
// socket.
type DovecotAuth struct {
	Dir    string
	Passwd string // the passwd-file; Dovecot rereads it when it changes
	Socket string // the auth-userdb socket
	t      testing.TB
	cmd    *exec.Cmd
	done   chan struct{}
}

// StartDovecotAuth starts Dovecot with passwd as its passwd-file (lines
// "user:{PLAIN}pw:uid:gid::home::userdb_FIELD=value ..."); it is stopped
// when the test ends.
func StartDovecotAuth(t testing.TB, passwd string) *DovecotAuth {
	t.Helper()
	Require(t, map[string]string{"dovecot": "dovecot-core"})
	dir, err := os.MkdirTemp("/tmp", "dovecot-userdb-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &DovecotAuth{Dir: dir, Passwd: filepath.Join(dir, "passwd"), Socket: filepath.Join(dir, "auth-userdb"), t: t}
	writeFile(t, d.Passwd, "%s", passwd)
	conf := filepath.Join(dir, "dovecot.conf")
	writeFile(t, conf, `base_dir = %[1]s/run
state_dir = %[1]s/state
instance_name = mailguard-userdb-%[2]s
log_path = %[1]s/dovecot.log
protocols =
ssl = no
passdb {
  driver = passwd-file
  args = scheme=PLAIN %[1]s/passwd
}
userdb {
  driver = passwd-file
  args = %[1]s/passwd
}
service auth {
  unix_listener %[3]s {
    mode = 0666
  }
}
`, dir, filepath.Base(dir), d.Socket)
	// Output to a file, not a pipe: Dovecot's children inherit it, and
	// a pipe would keep Wait waiting for the last of them.
	out, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	d.cmd = exec.Command("dovecot", "-F", "-c", conf)
	d.cmd.Stdout, d.cmd.Stderr = out, out
	// Its own process group, so Stop ends the auth process too, which
	// otherwise serves the connections it has until they close.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(d.Stop)
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(d.Socket); err == nil {
			return d
		}
		select {
		case <-d.done:
			i = 200
		default:
			time.Sleep(50 * time.Millisecond)
		}
	}
	stderr, _ := os.ReadFile(filepath.Join(dir, "stderr"))
	log, _ := os.ReadFile(filepath.Join(dir, "dovecot.log"))
	t.Fatalf("dovecot auth did not open %s:\n%s\n%s", d.Socket, stderr, log)
	return nil
}

// SetPasswd replaces the passwd-file, as an administrator edits it.
func (d *DovecotAuth) SetPasswd(passwd string) {
	tmp := d.Passwd + ".new"
	writeFile(d.t, tmp, "%s", passwd)
	// A later mtime than the file's: passwd-file rereads on change.
	later := time.Now().Add(2 * time.Second)
	os.Chtimes(tmp, later, later)
	if err := os.Rename(tmp, d.Passwd); err != nil {
		d.t.Fatal(err)
	}
}

// Stop stops Dovecot and its children (SIGTERM to its process group;
// SIGKILL after 10 s).
func (d *DovecotAuth) Stop() {
	select {
	case <-d.done:
		return
	default:
	}
	pgid := d.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-d.done
	}
}
