package listen

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestParse(t *testing.T) {
	cases := []struct {
		in, network, address, err string
	}{
		{"inet:127.0.0.1:8891", "tcp4", "127.0.0.1:8891", ""},
		{"inet:8891@127.0.0.1", "tcp4", "127.0.0.1:8891", ""},
		{"inet:localhost:8891", "tcp4", "localhost:8891", ""},
		{"inet6:[::1]:8891", "tcp6", "[::1]:8891", ""},
		{"inet6:8891@::1", "tcp6", "[::1]:8891", ""},
		{"unix:/run/mailguard.sock", "unix", "/run/mailguard.sock", ""},
		{"local:/run/x/../mailguard.sock", "unix", "/run/mailguard.sock", ""},
		{"unix:relative.sock", "", "", "absolute path"},
		{"inet:127.0.0.1", "", "", "HOST:PORT"},
		{"inet:127.0.0.1:0", "", "", "port"},
		{"inet:127.0.0.1:70000", "", "", "port"},
		{"inet:::1:25", "", "", ""},
		{"inet:[::1]:25", "", "", "not an address of this family"},
		{"inet6:127.0.0.1:25", "", "", "not an address of this family"},
		{"inet:mail.example.org:25", "", "", "not an IP address"},
		{"tcp:127.0.0.1:25", "", "", "unknown socket type"},
		{"127.0.0.1:25", "", "", "unknown socket type"},
		{"nonsense", "", "", "want inet"},
	}
	for _, c := range cases {
		a, err := Parse(c.in)
		if c.err != "" || c.network == "" {
			if err == nil {
				t.Errorf("%q: accepted as %+v", c.in, a)
			} else if !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: error %q lacks %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || a.Network != c.network || a.Address != c.address {
			t.Errorf("%q: got %+v %v, want %s %s", c.in, a, err, c.network, c.address)
		}
	}
}

func TestUnixSocketLifecycle(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.sock")
	a, _ := Parse("unix:" + path)

	ln, err := Listen(a, Socket{Mode: 0o640, Owner: -1, Group: -1})
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %o", fi.Mode().Perm())
	}
	if _, err := Listen(a, Socket{Mode: 0o640, Owner: -1, Group: -1}); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("second listener on a live socket: %v", err)
	}
	// A crash leaves the socket file behind: it is stale and replaced.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln, err = Listen(a, Socket{Mode: 0o640, Owner: -1, Group: -1})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln.Close()

	// Never remove something that is not a socket.
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(a, Socket{Mode: 0o640, Owner: -1, Group: -1}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Error("regular file was touched")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"inet:127.0.0.1:8891", "inet6:[::1]:1", "unix:/a", "inet:1@[::1]", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := Parse(s)
		if err != nil {
			return
		}
		switch a.Network {
		case "unix":
			if !filepath.IsAbs(a.Address) {
				t.Fatalf("%q: relative socket path %q", s, a.Address)
			}
		case "tcp4", "tcp6":
			if _, _, err := net.SplitHostPort(a.Address); err != nil {
				t.Fatalf("%q: bad address %q", s, a.Address)
			}
		default:
			t.Fatalf("%q: network %q", s, a.Network)
		}
	})
}

// The socket is born with its mode: with a wide umask, no moment between
// bind and chmod lets another user connect.
func TestUnixSocketBornWithItsMode(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "m.sock")
	var atBind os.FileMode
	afterBind = func(p string) {
		if fi, err := os.Lstat(p); err == nil {
			atBind = fi.Mode().Perm()
		}
	}
	defer func() { afterBind = nil }()
	a, _ := Parse("unix:" + path)
	ln, err := Listen(a, Socket{Mode: 0o600, Owner: -1, Group: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if atBind != 0o600 {
		t.Fatalf("socket mode at bind %o, want 600", atBind)
	}
}

// A socket's folder is created when missing (0750, in the socket's group),
// and the socket gets its owner and group, as a chrooted Postfix needs.
func TestUnixSocketOwnerAndFolder(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("giving a socket away needs root, as CI runs")
		}
		t.Skip("giving a socket away needs root")
	}
	dir := filepath.Join(t.TempDir(), "spool", "mailguard")
	a, _ := Parse("unix:" + filepath.Join(dir, "milter.sock"))
	ln, err := Listen(a, Socket{Mode: 0o660, Owner: 0, Group: 65534})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, _ := os.Stat(dir)
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o750 || st.Gid != 65534 {
		t.Errorf("folder mode %o group %d, want 750 and 65534", fi.Mode().Perm(), st.Gid)
	}
	fi, _ = os.Lstat(filepath.Join(dir, "milter.sock"))
	st = fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || st.Gid != 65534 || st.Uid != 0 {
		t.Errorf("socket mode %o owner %d:%d", fi.Mode().Perm(), st.Uid, st.Gid)
	}
}
