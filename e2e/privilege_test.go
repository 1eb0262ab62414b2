package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// testUser creates a system user that is a member of a new group, both
// removed when the test ends.
func testUser(t *testing.T, name, group string) (uid, gid, groupID int) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("creating a user needs root")
		}
		t.Skip("creating a user needs root")
	}
	exec.Command("userdel", name).Run()
	exec.Command("groupdel", group).Run()
	if out, err := exec.Command("groupadd", "--system", group).CombinedOutput(); err != nil {
		t.Fatalf("groupadd: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("groupdel", group).Run() })
	if out, err := exec.Command("useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
		"--shell", "/usr/sbin/nologin", "--groups", group, name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("userdel", name).Run() })
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	groupID, _ = strconv.Atoi(g.Gid)
	return uid, gid, groupID
}

// Started by an ordinary user that is a member of the MTA's group,
// mailguard gives its socket, and the folder it creates for it, to that
// group: what a chrooted Postfix needs, without root.
func TestSocketGroupUnprivileged(t *testing.T) {
	uid, gid, sockGID := testUser(t, "mgtest-sock", "mgtest-mta")
	dir, err := os.MkdirTemp("", "mailguard-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	os.Chown(dir, uid, gid)
	// The test binaries' folder is root's alone: a copy the user can run.
	bin := filepath.Join(dir, "mailguard")
	copyFile(t, filepath.Join(binDir, "mailguard"), bin, 0o755)
	sock := filepath.Join(dir, "spool", "milter.sock")
	cfg := filepath.Join(dir, "mailguard.toml")
	write(t, cfg, fmt.Sprintf("listen = \"unix:%s\"\nsocket_group = \"mgtest-mta\"\n", sock))

	logs := &lockedBuffer{}
	cmd := exec.Command(bin, "serve", "--config", cfg)
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{uint32(sockGID)}}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if i == 200 {
			t.Fatalf("mailguard did not listen on %s:\n%s", sock, logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range []struct {
		path string
		mode os.FileMode
	}{{sock, 0o660}, {filepath.Dir(sock), 0o750}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if int(st.Gid) != sockGID || int(st.Uid) != uid || fi.Mode().Perm() != c.mode {
			t.Errorf("%s: owner %d, group %d, mode %o; want %d, %d (the MTA's group), %o\n%s", c.path, st.Uid, st.Gid, fi.Mode().Perm(), uid, sockGID, c.mode, logs)
		}
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
