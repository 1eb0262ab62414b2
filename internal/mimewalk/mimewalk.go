// Package mimewalk walks a message's MIME structure as it streams, with
// go-message's parser: multiparts (nested), message/rfc822 parts, base64
// and quoted-printable. For each leaf part (an attachment, an inline
// text) it reports the decoded file name, the declared type, the kind its
// first bytes say it is, the names inside a zip archive, and its hashes,
// without holding the part in memory. Limits on depth, part count,
// decoded size and each header section keep a MIME bomb from costing more
// than a plain message. It reads what a mail client reads: broken part
// header lines are skipped, every name a part carries is reported, base64
// junk is skipped, and a zip's names come from its directory's records.
package mimewalk

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // names in any charset
	"github.com/emersion/go-message/textproto"

	"mailguard/internal/hashlist"
)

// Part is one leaf of the message.
type Part struct {
	Index int    // 1 for the first leaf
	Depth int    // 0 for a message that is not multipart
	Name  string // file name, decoded (RFC 2231, encoded words), base name only; "" if none
	// Names are every name the part carries (see fileNames), Name first.
	Names []string
	Type  string // declared media type, lower case ("application/pdf")
	// Kind is what the first bytes say the content is (see Sniff).
	Kind string
	// Sums hold the decoded content's hashes, those Options asked for,
	// and its size.
	Sums hashlist.Sums
	// ArchiveNames lists the file names inside a zip archive, when the
	// part is one and Options.Archives asked for them.
	ArchiveNames []string
	// ArchiveErr says why a zip's names could not be read ("" if they
	// were, or the part is no zip).
	ArchiveErr string
}

// Options tune a walk.
type Options struct {
	MaxDepth   int   // nesting of multiparts and message/rfc822; default 20
	MaxParts   int   // leaf parts; default 1000
	MaxDecoded int64 // decoded bytes of all parts; default 100 MiB
	// Which hashes to compute (each costs CPU per byte).
	SHA256, SHA1, MD5 bool
	// Archives lists the names inside zip parts, from the archive's
	// central directory at its end; ArchiveTail bounds the bytes kept
	// for it (default 256 KiB).
	Archives    bool
	ArchiveTail int
	// Content, when set, is called at each leaf's start (Index, Depth,
	// Name and Type known) and may return a writer that is then given
	// the leaf's decoded bytes as they are read, for a digest of its own
	// (fingerprints); nil skips the leaf. A Write that returns
	// ErrSkipContent wants no more: when the walk needs nothing else of
	// the part (no hashes, no archive names), the rest is passed over
	// undecoded, and Sums.Size counts only the bytes decoded until then.
	Content func(p *Part) io.Writer
}

// ErrSkipContent is what an Options.Content writer returns when it needs
// no more of a part.
var ErrSkipContent = errors.New("mimewalk: content not needed")

// LimitError is a walk stopped by one of its limits.
type LimitError struct {
	Limit string // "max_depth", "max_parts", "max_decoded", "max_header"
	Value int64
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("message exceeds %s (%d)", e.Limit, e.Value)
}

// ErrStop is what a callback returns to end the walk early.
var ErrStop = errors.New("mimewalk: stopped")

// MalformedError is MIME the parser could not follow; the parts before
// it were walked.
type MalformedError struct{ Err error }

func (e *MalformedError) Error() string { return "malformed MIME: " + e.Err.Error() }
func (e *MalformedError) Unwrap() error { return e.Err }

type walker struct {
	opts    Options
	fn      func(*Part) error
	parts   int
	decoded int64
	buf     []byte
	head    []byte
	tail    *ring
	b64     *base64Reader // reused from part to part
	stream  *streamGuard  // the first reader of the stream
	stopped error         // a limit a sections reader hit
	hashes  []hash.Hash
	sha256  hash.Hash
	sha1    hash.Hash
	md5     hash.Hash
}

// Walk reads a whole message (header and body) from r and calls fn for
// each leaf part, in order. fn's error (ErrStop among them) ends the walk
// and is returned. A limit hit returns a *LimitError, a structure the
// parser cannot follow a *MalformedError, and r's own error (other than
// io.EOF) itself; r is not read to its end then.
func Walk(r io.Reader, opts Options, fn func(*Part) error) error {
	if opts.MaxDepth <= 0 {
		opts.MaxDepth = 20
	}
	if opts.MaxParts <= 0 {
		opts.MaxParts = 1000
	}
	if opts.MaxDecoded <= 0 {
		opts.MaxDecoded = 100 << 20
	}
	if opts.ArchiveTail <= 0 {
		opts.ArchiveTail = 256 << 10
	}
	w := &walker{opts: opts, fn: fn, buf: make([]byte, 32<<10)}
	if opts.SHA256 {
		w.sha256 = sha256.New()
		w.hashes = append(w.hashes, w.sha256)
	}
	if opts.SHA1 {
		w.sha1 = sha1.New()
		w.hashes = append(w.hashes, w.sha1)
	}
	if opts.MD5 {
		w.md5 = md5.New()
		w.hashes = append(w.hashes, w.md5)
	}
	w.stream = &streamGuard{r: r}
	err := w.message(w.stream, 0)
	if stop := w.stop(); stop != nil {
		// A limit, or the stream's own failure: the parser may have
		// wrapped it, or taken it for a broken part.
		return stop
	}
	return err
}

// stop is what ended the walk whatever the parser made of it: a limit a
// sections reader hit, or the stream's failure.
func (w *walker) stop() error {
	if w.stopped != nil {
		return w.stopped
	}
	return w.stream.err
}

func (w *walker) setStop(err error) {
	if w.stopped == nil {
		w.stopped = err
	}
}

// message walks a message: its header (bounded, see sections), then its
// raw body.
func (w *walker) message(r io.Reader, depth int) error {
	br := bufio.NewReader(newSections(r, nil, w.setStop))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return &MalformedError{err}
	}
	return w.entity(message.Header{Header: h}, br, depth)
}

// entity walks one entity: its header and its raw (not yet decoded) body.
func (w *walker) entity(h message.Header, raw io.Reader, depth int) error {
	if depth > w.opts.MaxDepth {
		return &LimitError{"max_depth", int64(w.opts.MaxDepth)}
	}
	mediaType, params, _ := h.ContentType()
	switch {
	case strings.HasPrefix(mediaType, "multipart/") && params["boundary"] != "":
		// (Without a boundary, a mail client shows the content as it is.)
		body := &eofReader{r: newSections(raw, []byte("--"+params["boundary"]), w.setStop)}
		mr := textproto.NewMultipartReader(body, params["boundary"])
		for {
			p, err := mr.NextPart()
			// A multipart cut short (no final boundary) ends where its
			// content does, as mail clients read it.
			if errors.Is(err, io.EOF) || err != nil && body.eof {
				return nil
			}
			if err != nil {
				return &MalformedError{err}
			}
			if err := w.entity(message.Header{Header: p.Header}, p, depth+1); err != nil {
				return err
			}
		}
	case mediaType == "message/rfc822" || mediaType == "message/global":
		// Its own reader: the inner message's parts need the walker's.
		body, _ := (&walker{}).decode(h, raw)
		return w.message(body, depth+1)
	}
	return w.leaf(h, raw, mediaType, depth)
}

// decode undoes the transfer encoding, and only that: the bytes hashed
// are the file's, whatever its charset. An unknown encoding leaves the
// raw bytes.
func (w *walker) decode(h message.Header, raw io.Reader) (io.Reader, error) {
	if strings.EqualFold(strings.TrimSpace(h.Get("Content-Transfer-Encoding")), "base64") {
		if w.b64 == nil {
			w.b64 = newBase64Reader(raw)
		} else {
			w.b64.reset(raw)
		}
		return w.b64, nil
	}
	// message.New would also convert text to UTF-8; a header without
	// a Content-Type charset keeps the bytes as they are.
	hh := message.Header{Header: textproto.Header{}}
	if enc := h.Get("Content-Transfer-Encoding"); enc != "" {
		hh.Set("Content-Transfer-Encoding", enc)
	}
	e, err := message.New(hh, raw)
	if e == nil {
		return raw, err
	}
	return e.Body, err
}

func (w *walker) leaf(h message.Header, raw io.Reader, mediaType string, depth int) error {
	w.parts++
	if w.parts > w.opts.MaxParts {
		return &LimitError{"max_parts", int64(w.opts.MaxParts)}
	}
	p := &Part{Index: w.parts, Depth: depth, Type: mediaType, Names: fileNames(h)}
	if len(p.Names) > 0 {
		p.Name = p.Names[0]
	}
	body, _ := w.decode(h, raw)
	var content io.Writer
	if w.opts.Content != nil {
		content = w.opts.Content(p)
	}
	for _, hs := range w.hashes {
		hs.Reset()
	}
	w.head = w.head[:0]
	var tail *ring
	for {
		n, err := body.Read(w.buf)
		if n > 0 {
			chunk := w.buf[:n]
			w.decoded += int64(n)
			if w.decoded > w.opts.MaxDecoded {
				return &LimitError{"max_decoded", w.opts.MaxDecoded}
			}
			p.Sums.Size += int64(n)
			for _, hs := range w.hashes {
				hs.Write(chunk)
			}
			if len(w.head) < sniffLen {
				w.head = append(w.head, chunk[:min(n, sniffLen-len(w.head))]...)
				if tail == nil && w.opts.Archives && bytes.HasPrefix(w.head, zipMagic) {
					tail = w.ring()
				}
			}
			if tail != nil {
				tail.Write(chunk)
			}
			if content != nil {
				if _, err := content.Write(chunk); err == ErrSkipContent {
					content = nil
					if len(w.hashes) == 0 && tail == nil && len(w.head) >= sniffLen {
						// Nothing else wants the bytes: skip to the
						// part's end without decoding.
						if _, err := io.Copy(io.Discard, raw); err != nil {
							if stop := w.stop(); stop != nil {
								return stop
							}
						}
						break
					}
				}
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// A broken encoding (bad base64) ends the part's content:
			// what was decoded is hashed, as a mail client would save it.
			if stop := w.stop(); stop != nil {
				return stop // the stream itself failed, or a limit
			}
			break
		}
	}
	if w.sha256 != nil {
		w.sha256.Sum(p.Sums.SHA256[:0])
	}
	if w.sha1 != nil {
		w.sha1.Sum(p.Sums.SHA1[:0])
	}
	if w.md5 != nil {
		w.md5.Sum(p.Sums.MD5[:0])
	}
	p.Kind = Sniff(w.head)
	if tail != nil {
		p.ArchiveNames, p.ArchiveErr = zipNames(tail, p.Sums.Size)
	}
	return w.fn(p)
}

// eofReader notes that its reader came to its end.
type eofReader struct {
	r   io.Reader
	eof bool
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		e.eof = true // (unexpected: the multipart around it was cut short too)
	}
	return n, err
}

func (w *walker) ring() *ring {
	if w.tail == nil {
		w.tail = &ring{buf: make([]byte, w.opts.ArchiveTail)}
	}
	w.tail.reset()
	return w.tail
}

// maxName bounds a file name as reported: a name is a sender's choice,
// and lands in log lines and replies.
const maxName = 255

// clip cuts a name to maxName bytes, keeping its end (the extension).
func clip(name string) string {
	if len(name) <= maxName {
		return name
	}
	return strings.ToValidUTF8(name[len(name)-maxName:], "")
}
