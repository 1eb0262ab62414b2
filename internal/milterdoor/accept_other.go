//go:build !linux

package milterdoor

import "net"

// newAccepter is ln: the raw accept is Linux's (see accept_linux.go).
func newAccepter(ln net.Listener) accepter { return ln }
