package milterdoor

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
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
	// maxPacket bounds one packet. We never negotiate body chunks over
	// 64 KiB, so anything much larger is a broken or hostile peer.
	maxPacket = 1 << 20
	// readBufferSize holds one whole 64 KiB body packet (65,535 bytes of
	// data and a 5-byte header), so packets are served from the buffer
	// without a copy, and no more: with hundreds of connections open, the
	// buffers are most of the daemon's memory.
	readBufferSize = 65535 + 5 + 64
)

var errPacketTooLarge = errors.New("milter packet too large")

var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufferSize) }}

// wireConn reads and writes milter packets on one connection. A packet's
// data is valid until the next read: it usually points into the read
// buffer, which is why nothing on the hot path allocates.
type wireConn struct {
	conn        net.Conn
	r           *bufio.Reader
	large       []byte // for the rare packet larger than the read buffer
	consumed    int    // bytes of the previous packet still to discard
	out         []byte
	idle        time.Duration
	deadlineSet time.Time
}

func newWireConn(c net.Conn, idle time.Duration) *wireConn {
	r := readers.Get().(*bufio.Reader)
	r.Reset(c)
	return &wireConn{conn: c, r: r, idle: idle, out: make([]byte, 0, 512)}
}

// release returns the read buffer to the pool; the connection must be
// closed and no read may follow.
func (w *wireConn) release() {
	w.r.Reset(nil)
	readers.Put(w.r)
	w.r = nil
}

// readPacket returns the next command and its data.
func (w *wireConn) readPacket() (byte, []byte, error) {
	if w.consumed > 0 {
		w.r.Discard(w.consumed)
		w.consumed = 0
	}
	// Refresh the idle deadline at most once a second: setting it costs
	// more than reading a small packet.
	if now := time.Now(); now.Sub(w.deadlineSet) > time.Second {
		w.conn.SetReadDeadline(now.Add(w.idle))
		w.deadlineSet = now
	}
	head, err := w.r.Peek(4)
	if err != nil {
		if errors.Is(err, io.EOF) && len(head) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(head))
	if n < 1 {
		return 0, nil, fmt.Errorf("milter packet of length %d", n)
	}
	if n > maxPacket {
		return 0, nil, fmt.Errorf("%w: %d bytes", errPacketTooLarge, n)
	}
	if 4+n <= w.r.Size() {
		pkt, err := w.r.Peek(4 + n)
		if err != nil {
			return 0, nil, unexpectedEOF(err)
		}
		w.consumed = 4 + n
		return pkt[4], pkt[5:], nil
	}
	w.r.Discard(4)
	if cap(w.large) < n {
		w.large = make([]byte, n)
	}
	w.large = w.large[:n]
	if _, err := io.ReadFull(w.r, w.large); err != nil {
		return 0, nil, unexpectedEOF(err)
	}
	return w.large[0], w.large[1:], nil
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// writePacket sends one reply in one write.
func (w *wireConn) writePacket(code byte, data []byte) error {
	w.out = binary.BigEndian.AppendUint32(w.out[:0], uint32(len(data)+1))
	w.out = append(append(w.out, code), data...)
	w.conn.SetWriteDeadline(time.Now().Add(w.idle))
	_, err := w.conn.Write(w.out)
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
