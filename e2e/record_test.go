package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

// milterPort is the port to give an MTA for mailguard on port: the port
// itself, or, when MAILGUARD_RECORD_SEEDS names a folder, a proxy that
// writes what the MTA sends on each milter connection there, in the
// format of Go's fuzz corpus (the seeds of the door's FuzzServe).
func milterPort(t *testing.T, port int, mta string) int {
	dir := os.Getenv("MAILGUARD_RECORD_SEEDS")
	if dir == "" {
		return port
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
				if err != nil {
					return
				}
				defer up.Close()
				var sent []byte
				var wg sync.WaitGroup
				wg.Add(1)
				go func() { defer wg.Done(); io.Copy(c, up) }()
				buf := make([]byte, 64<<10)
				for {
					m, err := c.Read(buf)
					sent = append(sent, buf[:m]...)
					if _, werr := up.Write(buf[:m]); werr != nil || err != nil {
						break
					}
				}
				up.(*net.TCPConn).CloseWrite()
				wg.Wait()
				name := filepath.Join(dir, fmt.Sprintf("%s-%d", mta, n.Add(1)))
				os.WriteFile(name, []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", sent)), 0o644)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}
