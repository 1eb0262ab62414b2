package loadgen

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/d--j/go-milter"
)

// This file drives slow-loris peers: connections that send a byte every
// few seconds, to show that the milter's timeouts close them.

// LorisStage is where a slow-loris peer trickles its bytes.
type LorisStage int

const (
	// LorisNegotiation trickles the option negotiation packet.
	LorisNegotiation LorisStage = iota
	// LorisPacket negotiates, sends the connect stage and HELO, then
	// trickles a MAIL packet.
	LorisPacket
	// LorisBody sends a message up to one 4 KiB body chunk, then trickles
	// the next 64 KiB body packet.
	LorisBody
	// LorisBodyPackets sends a message up to one body chunk, then one
	// whole body packet of one byte each gap: every packet is activity.
	LorisBodyPackets
)

// LorisStages are all the stages, in order.
var LorisStages = []LorisStage{LorisNegotiation, LorisPacket, LorisBody, LorisBodyPackets}

func (s LorisStage) String() string {
	return [...]string{"negotiation", "mid-packet", "mid-body", "body packets"}[s]
}

// LorisOptions for one slow-loris peer.
type LorisOptions struct {
	Network, Address string
	Stage            LorisStage
	Gap              time.Duration // between bytes (packets for LorisBodyPackets); default 2 s
	Limit            time.Duration // give up after this long; default 15 minutes
	Timeout          time.Duration // a reply's longest wait before the trickle; default 60 s
}

// LorisResult says whether and when the milter closed the connection.
type LorisResult struct {
	Stage  LorisStage
	Sent   int           // bytes trickled
	Closed bool          // the milter closed it (else Limit passed first)
	After  time.Duration // from the trickle's start (the dial, in negotiation) to the close
	Err    error         // the run could not reach its stage
}

// Loris runs one slow-loris peer until the milter closes it or o.Limit
// passes.
func Loris(o LorisOptions) LorisResult {
	if o.Gap <= 0 {
		o.Gap = 2 * time.Second
	}
	if o.Limit <= 0 {
		o.Limit = 15 * time.Minute
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	res := LorisResult{Stage: o.Stage}
	var (
		conn    net.Conn
		trickle []byte
		err     error
	)
	start := time.Now()
	if o.Stage == LorisNegotiation {
		conn, err = net.DialTimeout(o.Network, o.Address, 10*time.Second)
		// A negotiation packet of 1,000 bytes (v6 may append to the 13),
		// which the trickle never finishes.
		trickle = packetHead('O', 1000)
		trickle = binary.BigEndian.AppendUint32(trickle, 6)
	} else {
		conn, trickle, err = lorisPrelude(o)
		start = time.Now()
	}
	if err != nil {
		res.Err = err
		return res
	}
	defer conn.Close()
	closed := make(chan time.Time, 1)
	go func() {
		io.Copy(io.Discard, conn) // replies, until the milter closes
		closed <- time.Now()
	}()
	tick := time.NewTicker(o.Gap)
	defer tick.Stop()
	limit := time.NewTimer(o.Limit)
	defer limit.Stop()
	for {
		var b []byte
		switch {
		case o.Stage == LorisBodyPackets:
			b = append(packetHead('B', 1), 'x')
		case res.Sent < len(trickle):
			b = trickle[res.Sent : res.Sent+1]
		default:
			b = []byte{'x'}
		}
		conn.SetWriteDeadline(time.Now().Add(o.Gap))
		if _, err := conn.Write(b); err != nil {
			select { // a write into a closed connection: wait for the reader's word
			case at := <-closed:
				res.Closed, res.After = true, at.Sub(start)
			case <-time.After(time.Second):
				res.Closed, res.After = true, time.Since(start)
			}
			return res
		}
		res.Sent += len(b)
		select {
		case at := <-closed:
			res.Closed, res.After = true, at.Sub(start)
			return res
		case <-limit.C:
			return res
		case <-tick.C:
		}
	}
}

// packetHead is a packet's length and command (a milter command
// letter: O negotiation, M MAIL, B body), for a packet of n data
// bytes.
func packetHead(code byte, n int) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(n+1)), code)
}

// lorisPrelude brings a connection to its stage and returns what to
// trickle there.
func lorisPrelude(o LorisOptions) (net.Conn, []byte, error) {
	s, conn, err := dialSession(o.Network, o.Address, o.Timeout)
	if err != nil {
		return nil, nil, err
	}
	steps := []func() (*milter.Action, error){
		func() (*milter.Action, error) {
			return s.Conn("loris.example.org", milter.FamilyInet, 40000, "192.0.2.40")
		},
		func() (*milter.Action, error) { return s.Helo("loris.example.org") },
	}
	trickle := append(packetHead('M', 1000), "<loris@example.org>"...)
	if o.Stage != LorisPacket {
		steps = append(steps,
			func() (*milter.Action, error) { return s.Mail("loris@example.org", "") },
			func() (*milter.Action, error) { return s.Rcpt("user@example.edu", "") },
			s.DataStart,
			func() (*milter.Action, error) { return s.HeaderField("Subject", "loris", nil) },
			s.HeaderEnd,
			func() (*milter.Action, error) { return s.BodyChunk(textBody(4096)) },
		)
		trickle = append(packetHead('B', 65535), textBody(65535)...)
	}
	for _, step := range steps {
		act, err := step()
		if err == nil && act.Type != milter.ActionContinue {
			err = fmt.Errorf("refused before its stage: %s", verdictName(act))
		}
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
	}
	return conn, trickle, nil
}
