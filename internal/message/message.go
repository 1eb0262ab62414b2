// Package message reads a stored message (an .eml file, a Maildir file) the
// way an MTA hands it to a milter: header fields one by one, then the body
// in chunks, with line ends as CRLF. It never buffers a whole message and
// never fails on malformed input: whatever cannot be read as a header is
// passed on as body, so a scan still sees every byte.
package message

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

const (
	// ChunkSize is the body chunk size, as Postfix and Sendmail send it.
	ChunkSize = 65535
	// MaxHeaderBytes bounds the header section; past it, the rest is body.
	MaxHeaderBytes = 1 << 20
	// maxFieldBytes bounds one (unfolded) header field.
	maxFieldBytes = 64 << 10
)

// Field is one header field; Value is unfolded, without the leading blank.
type Field struct {
	Name, Value string
}

// Reader splits a message into header fields and body chunks.
type Reader struct {
	r       *bufio.Reader
	pending []byte // body bytes already read while looking for the header's end
	prevCR  bool
	buf     []byte
	out     []byte
}

// NewReader reads a message from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 64<<10), buf: make([]byte, ChunkSize), out: make([]byte, 0, 2*ChunkSize)}
}

// Header reads the header section. A leading mbox "From " line is skipped.
// Reading stops at the blank line that ends the header, at a line that is
// not a header field (which then starts the body), or at MaxHeaderBytes.
func (m *Reader) Header() ([]Field, error) {
	var (
		fields []Field
		total  int
		first  = true
	)
	for {
		line, err := m.readLine()
		total += len(line)
		if len(line) == 0 && err != nil {
			if errors.Is(err, io.EOF) {
				return fields, nil
			}
			return fields, err
		}
		if first && bytes.HasPrefix(line, []byte("From ")) {
			first = false
			continue
		}
		first = false
		trimmed := trimEOL(line)
		if len(trimmed) == 0 {
			return fields, nil // end of header; the blank line is not body
		}
		if (trimmed[0] == ' ' || trimmed[0] == '\t') && len(fields) > 0 {
			f := &fields[len(fields)-1]
			if len(f.Value)+len(trimmed) <= maxFieldBytes {
				f.Value += "\r\n" + string(trimmed)
			}
			continue
		}
		name, value, ok := bytes.Cut(trimmed, []byte(":"))
		if !ok || !validName(name) || total > MaxHeaderBytes || len(trimmed) > maxFieldBytes {
			m.pending = append(m.pending[:0], line...)
			return fields, nil
		}
		value = bytes.TrimLeft(value, " \t")
		fields = append(fields, Field{Name: string(name), Value: string(value)})
		if err != nil {
			return fields, nil
		}
	}
}

// readLine returns the next line with its line end, at most maxFieldBytes+2
// long (a longer line comes back in pieces).
func (m *Reader) readLine() ([]byte, error) {
	line, err := m.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return append([]byte(nil), line...), nil
	}
	return append([]byte(nil), line...), err
}

func trimEOL(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

// validName: RFC 5322 §3.6.8, printable ASCII except colon, no blanks.
func validName(b []byte) bool {
	if len(b) == 0 || len(b) > 200 {
		return false
	}
	for _, c := range b {
		if c < 33 || c > 126 {
			return false
		}
	}
	return true
}

// BodyChunk returns the next body chunk with bare LF turned into CRLF, or
// io.EOF at the end. The chunk is valid until the next call.
func (m *Reader) BodyChunk() ([]byte, error) {
	var in []byte
	if len(m.pending) > 0 {
		in = m.pending
		m.pending = nil
	} else {
		n, err := io.ReadFull(m.r, m.buf)
		if n == 0 {
			if err == nil || errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.EOF
			}
			return nil, err
		}
		in = m.buf[:n]
	}
	m.out, m.prevCR = AppendCRLF(m.out[:0], in, m.prevCR)
	return m.out, nil
}

// AppendCRLF appends src to dst with every LF not preceded by CR turned
// into CRLF. prevCR tells whether the byte before src was a CR; the result
// tells the same for the byte after.
func AppendCRLF(dst, src []byte, prevCR bool) ([]byte, bool) {
	for len(src) > 0 {
		i := bytes.IndexByte(src, '\n')
		if i < 0 {
			dst = append(dst, src...)
			return dst, src[len(src)-1] == '\r'
		}
		dst = append(dst, src[:i]...)
		if !(i > 0 && src[i-1] == '\r' || i == 0 && prevCR) {
			dst = append(dst, '\r')
		}
		dst = append(dst, '\n')
		src = src[i+1:]
		prevCR = false
	}
	return dst, prevCR
}

// ErrTooLarge is returned by ReadBody for a body over its limit.
var ErrTooLarge = errors.New("message body too large")

// AppendField appends a header field as it stands in a message, name
// ": " value CRLF, with a folded value's line ends made CRLF as the body's
// are.
func AppendField(dst []byte, name, value string) []byte {
	dst = append(dst, name...)
	dst = append(dst, ": "...)
	for i := 0; i < len(value); i++ {
		c := value[i]
		if c == '\n' && (i == 0 || value[i-1] != '\r') {
			dst = append(dst, '\r')
		}
		dst = append(dst, c)
	}
	return append(dst, "\r\n"...)
}

// ReadBody returns the body of a stored message as the MTA would pass it
// (CRLF line ends), reading at most limit bytes of it.
func ReadBody(r io.Reader, limit int) ([]byte, error) {
	m := NewReader(r)
	if _, err := m.Header(); err != nil {
		return nil, err
	}
	var body []byte
	for {
		c, err := m.BodyChunk()
		if errors.Is(err, io.EOF) {
			return body, nil
		}
		if err != nil {
			return nil, err
		}
		if len(body)+len(c) > limit {
			return nil, ErrTooLarge
		}
		body = append(body, c...)
	}
}
