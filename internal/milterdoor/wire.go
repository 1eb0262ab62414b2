package milterdoor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Milter protocol commands, MTA to milter (libmilter's mfdef.h, SMFIC_*).
const (
	cmdOptNeg      = 'O'
	cmdMacro       = 'D'
	cmdConnect     = 'C'
	cmdHelo        = 'H'
	cmdMail        = 'M'
	cmdRcpt        = 'R'
	cmdData        = 'T'
	cmdHeader      = 'L'
	cmdEOH         = 'N'
	cmdBody        = 'B'
	cmdEOB         = 'E'
	cmdAbort       = 'A'
	cmdQuit        = 'Q'
	cmdQuitNewConn = 'K'
	cmdUnknown     = 'U'
)

// Milter protocol replies, milter to MTA (SMFIR_*).
const (
	replyAccept    = 'a'
	replyContinue  = 'c'
	replyDiscard   = 'd'
	replyReject    = 'r'
	replyTempFail  = 't'
	replyReplyCode = 'y'
	// replyProgress asks the MTA to keep waiting (SMFIR_PROGRESS, v6).
	replyProgress = 'p'
	// Message changes, sent before the final reply at the end of the
	// message: remove a recipient (SMFIR_DELRCPT), add, insert or change a
	// header field (SMFIR_ADDHEADER, SMFIR_INSHEADER, SMFIR_CHGHEADER).
	modDeleteRcpt   = '-'
	modAddHeader    = 'h'
	modInsertHeader = 'i'
	modChangeHeader = 'm'
)

const (
	// maxPacket bounds one packet by what MTAs send. Body chunks are at
	// most 65,535 bytes (we never negotiate larger ones); the largest
	// packets are header fields: Postfix sends each field whole, up to
	// its header_size_limit (102,400 bytes by default), and Sendmail's
	// headers are shorter. Anything larger is a broken or hostile peer.
	maxPacket = 256 << 10
	// bigBufferSize holds one whole 64 KiB body packet (65,535 bytes of
	// data and a 5-byte header), so body chunks are served from the
	// buffer without a copy. A connection holds one only while packets
	// that need it arrive: see wireConn.
	bigBufferSize = 65535 + 5 + 64
	// smallBufferSize holds the packets of everything but the body
	// (negotiation, macros, envelope, most header fields).
	smallBufferSize = 1024
)

var errPacketTooLarge = errors.New("milter packet too large")

// bigBuffers are the 64 KiB buffers connections borrow for body packets.
var bigBuffers = sync.Pool{New: func() any { b := make([]byte, bigBufferSize); return &b }}

// largeBudget bounds the bytes all connections may hold at once in
// packets larger than the big buffer (header fields over 64 KiB, which
// real mail rarely has): past it a connection is closed rather than the
// daemon's memory grown.
type largeBudget struct {
	used atomic.Int64
	peak atomic.Int64 // the most ever used, for tests
	max  int64
}

func (b *largeBudget) take(n int) bool {
	if b == nil {
		return true
	}
	used := b.used.Add(int64(n))
	if used > b.max {
		b.used.Add(-int64(n))
		return false
	}
	for p := b.peak.Load(); used > p && !b.peak.CompareAndSwap(p, used); p = b.peak.Load() {
	}
	return true
}

func (b *largeBudget) give(n int) {
	if b != nil {
		b.used.Add(-int64(n))
	}
}

// wireConn reads and writes milter packets on one connection. A packet's
// data is valid until the next read: it points into the read buffer,
// which is why nothing on the hot path allocates.
//
// The read buffer is the connection's own 1 KiB until a packet needs
// more (a body chunk); then a 64 KiB one is borrowed from a pool, and
// given back as soon as it holds no unread byte between messages. Each
// read takes what the kernel has, as bufio would: a silent or idle
// connection costs its goroutine and 1 KiB, a busy one the same system
// calls as with one large buffer.
type wireConn struct {
	conn        net.Conn
	raw         rawReadWriter // conn's reads and writes as raw system calls, if a socket
	buf         []byte        // small[:] or *big
	r, w        int           // unread bytes: buf[r:w]
	small       [smallBufferSize]byte
	big         *[]byte // borrowed, or nil
	large       []byte  // the packet larger than the big buffer, until the next read
	budget      *largeBudget
	consumed    int // bytes of the previous packet still to discard
	out         []byte
	idle        time.Duration
	refresh     time.Duration // how often the idle deadline may be moved on
	deadlineSet time.Time
}

func newWireConn(c net.Conn, idle time.Duration, budget *largeBudget) *wireConn {
	// Once a second, or twice per idle timeout if that is shorter: an
	// active connection must never outlast a deadline set long ago.
	refresh := min(time.Second, idle/2)
	w := &wireConn{conn: c, raw: newRawIO(c), idle: idle, refresh: refresh, budget: budget, out: make([]byte, 0, 512)}
	w.buf = w.small[:]
	return w
}

// release gives back every buffer; the connection must be closed and no
// read may follow.
func (w *wireConn) release() {
	w.dropLarge()
	w.putBig()
}

// putBig gives the big buffer back and reads into the small one again.
func (w *wireConn) putBig() {
	if w.big != nil {
		bigBuffers.Put(w.big)
		w.big = nil
	}
	w.buf, w.r, w.w = w.small[:], 0, 0
}

func (w *wireConn) dropLarge() {
	if w.large != nil {
		w.budget.give(len(w.large)) // what readLarge charged
		w.large = nil
	}
}

// negotiationPacket reads the MTA's option negotiation (17 bytes, a few
// more with v6 extensions) within timeout.
func (w *wireConn) negotiationPacket(timeout time.Duration) (byte, []byte, error) {
	w.conn.SetReadDeadline(time.Now().Add(timeout))
	w.deadlineSet = time.Now() // keep this deadline for this read
	cmd, data, err := w.readPacket()
	if err == nil && len(data) > smallBufferSize {
		err = fmt.Errorf("option negotiation packet of %d bytes", len(data)+1)
	}
	w.deadlineSet = time.Time{} // the next read sets the idle deadline
	return cmd, data, err
}

// releaseIdle gives the big buffer back while the connection waits for the
// MTA's next message: an MTA keeps its milter connection for the whole
// SMTP session, so most open connections are idle ones. It does nothing
// if bytes are waiting.
func (w *wireConn) releaseIdle() {
	w.r += w.consumed
	w.consumed = 0
	if w.big != nil && w.r == w.w {
		w.putBig()
	}
}

// fill reads until at least n unread bytes are buffered (n fits the
// buffer).
func (w *wireConn) fill(n int) error {
	if w.w-w.r >= n {
		return nil
	}
	if len(w.buf)-w.r < n { // move the unread bytes to the front
		w.w = copy(w.buf, w.buf[w.r:w.w])
		w.r = 0
	}
	for w.w-w.r < n {
		m, err := w.read(w.buf[w.w:])
		w.w += m
		if err != nil {
			if w.w-w.r >= n {
				return nil
			}
			if errors.Is(err, io.EOF) && w.w > w.r {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// grow moves to the big buffer, keeping the unread bytes.
func (w *wireConn) grow() {
	w.big = bigBuffers.Get().(*[]byte)
	w.w = copy(*w.big, w.buf[w.r:w.w])
	w.buf, w.r = *w.big, 0
}

// readPacket returns the next command and its data.
func (w *wireConn) readPacket() (byte, []byte, error) {
	w.r += w.consumed
	w.consumed = 0
	w.dropLarge()
	// Refresh the idle deadline at most once a second: setting it costs
	// more than reading a small packet. It is set before a packet, not
	// during one, so a peer that trickles a packet's bytes is closed at
	// the idle timeout counted from the packet's start.
	if now := time.Now(); now.Sub(w.deadlineSet) > w.refresh {
		w.conn.SetReadDeadline(now.Add(w.idle))
		w.deadlineSet = now
	}
	if err := w.fill(4); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(w.buf[w.r:]))
	if n < 1 {
		return 0, nil, fmt.Errorf("milter packet of length %d", n)
	}
	if n > maxPacket {
		return 0, nil, fmt.Errorf("%w: %d bytes, at most %d", errPacketTooLarge, n, maxPacket)
	}
	if 4+n > bigBufferSize {
		w.r += 4
		return w.readLarge(n)
	}
	if 4+n > len(w.buf) {
		w.grow()
	}
	if err := w.fill(4 + n); err != nil {
		return 0, nil, unexpectedEOF(err)
	}
	pkt := w.buf[w.r : w.r+4+n]
	w.consumed = 4 + n
	return pkt[4], pkt[5:], nil
}

// readLarge reads a packet larger than the big buffer into a buffer of
// its own, charging the door's budget with each read's bytes once they
// have arrived: an announced length costs nothing, so idle connections
// that announce large packets and send a few bytes cannot spend the
// budget that honest large header fields need. The buffer grows as Go's
// append grows a slice, from bytes already read, so it holds at most
// about twice what was charged.
func (w *wireConn) readLarge(n int) (byte, []byte, error) {
	for len(w.large) < n {
		if w.r == w.w && len(w.large) < cap(w.large) {
			// Room left by the last growth: read straight into it.
			m, err := w.read(w.large[len(w.large):min(cap(w.large), n)])
			if !w.budget.take(m) {
				return 0, nil, errLargeBudget
			}
			w.large = w.large[:len(w.large)+m]
			if err != nil && len(w.large) < n {
				return 0, nil, unexpectedEOF(err)
			}
			continue
		}
		if w.r == w.w { // into the read buffer, then appended
			m, err := w.read(w.buf)
			w.r, w.w = 0, m
			if m == 0 && err != nil {
				return 0, nil, unexpectedEOF(err)
			}
		}
		m := min(w.w-w.r, n-len(w.large))
		if !w.budget.take(m) {
			return 0, nil, errLargeBudget
		}
		w.large = append(w.large, w.buf[w.r:w.r+m]...)
		w.r += m
	}
	return w.large[0], w.large[1:n], nil
}

var errLargeBudget = fmt.Errorf("%w: the door's budget for packets over %d bytes is spent", errPacketTooLarge, bigBufferSize)

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// read reads what the connection has, up to len(b) bytes.
func (w *wireConn) read(b []byte) (int, error) {
	if w.raw != nil {
		return w.raw.Read(b)
	}
	return w.conn.Read(b)
}

// writePacket sends one reply in one write. A reply nearly always fits
// the socket's buffer at once; only one that does not waits, and only
// then is the write deadline set (setting it costs more than the write).
func (w *wireConn) writePacket(code byte, data []byte) error {
	w.out = binary.BigEndian.AppendUint32(w.out[:0], uint32(len(data)+1))
	w.out = append(append(w.out, code), data...)
	if w.raw == nil {
		w.conn.SetWriteDeadline(time.Now().Add(w.idle))
		_, err := w.conn.Write(w.out)
		return err
	}
	n, err := w.raw.write(w.out, false)
	if err != errWouldBlock {
		return err
	}
	w.conn.SetWriteDeadline(time.Now().Add(w.idle))
	_, err = w.raw.write(w.out[n:], true)
	w.conn.SetWriteDeadline(time.Time{}) // the next write may not wait: it sets its own
	return err
}

// cString returns the NUL-terminated string at the start of b and the rest
// after its NUL. Without a NUL, all of b is the string.
func cString(b []byte) (string, []byte) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:]
		}
	}
	return string(b), nil
}

// cStrings splits NUL-terminated strings.
func cStrings(b []byte) []string {
	var out []string
	for len(b) > 0 {
		var s string
		s, b = cString(b)
		out = append(out, s)
	}
	return out
}

func nextCString(b []byte) ([]byte, []byte) {
	for i, c := range b {
		if c == 0 {
			return b[:i], b[i+1:]
		}
	}
	return b, nil
}
