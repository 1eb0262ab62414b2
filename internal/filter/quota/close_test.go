package quota

import (
	"bufio"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailguard/internal/dovecotauth"
	"mailguard/internal/pipeline"
)

// A filter whose reload replaced it closes the connection it kept to
// Dovecot's userdb, rather than leaving it to the idle sweep.
func TestCloseEndsUserdbConnections(t *testing.T) {
	path := filepath.Join(t.TempDir(), "auth-userdb")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ended := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte("VERSION\t1\t2\nSPID\t42\n"))
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			if f := strings.Split(sc.Text(), "\t"); f[0] == "USER" {
				c.Write([]byte("NOTFOUND\t" + f[1] + "\n"))
			}
		}
		close(ended) // the client closed its end
	}()
	f := New(Options{Userdb: &Userdb{Client: &dovecotauth.Client{Path: path}, Cache: time.Minute, Maildir: "~/Maildir"}})
	c, err := f.NewCheck(t.Context(), &pipeline.Envelope{From: "someone@example.org"})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := c.Rcpt(t.Context(), nil, "alice@example.edu", ""); err != nil || v.Final() {
		t.Fatalf("unknown user: %v %v", v, err)
	}
	c.Close()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the userdb connection is still open after Close")
	}
}
