//go:build !linux

package milterdoor

import "net"

// workerPoller is Linux's (see pollconn_linux.go); elsewhere connections
// are net's and need nothing from their worker.
type workerPoller struct{}

func (*workerPoller) attach(net.Conn) error { return nil }
func (*workerPoller) close()                {}

// finishConn closes c for good: its owner's last act.
func finishConn(c net.Conn) { c.Close() }
