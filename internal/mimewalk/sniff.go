package mimewalk

import (
	"bytes"
)

// sniffLen is how much of a part's start Sniff looks at.
const sniffLen = 512

var zipMagic = []byte("PK\x03\x04")

// Kinds Sniff reports. The executables are what sites refuse when they
// arrive under another name.
const (
	KindExe   = "exe"   // Windows PE/DOS (MZ)
	KindELF   = "elf"   // Linux/Unix executable
	KindMachO = "macho" // macOS executable
	KindZip   = "zip"   // zip, and what is built on it (docx, xlsx, jar, apk)
	KindPDF   = "pdf"
	KindOLE   = "ole" // MS Office 97-2003 (doc, xls, ppt), msi
	KindRAR   = "rar"
	Kind7z    = "7z"
	KindGzip  = "gzip"
	KindPNG   = "png"
	KindJPEG  = "jpeg"
	KindGIF   = "gif"
	KindRTF   = "rtf"
)

var magics = []struct {
	prefix []byte
	kind   string
}{
	{[]byte("MZ"), KindExe},
	{[]byte("\x7fELF"), KindELF},
	{[]byte("\xcf\xfa\xed\xfe"), KindMachO},
	{[]byte("\xce\xfa\xed\xfe"), KindMachO},
	{[]byte("\xfe\xed\xfa\xcf"), KindMachO},
	{[]byte("\xfe\xed\xfa\xce"), KindMachO},
	{[]byte("\xca\xfe\xba\xbe"), KindMachO}, // universal binary (also Java class)
	{zipMagic, KindZip},
	{[]byte("PK\x05\x06"), KindZip}, // empty zip
	{[]byte("%PDF-"), KindPDF},
	{[]byte("\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"), KindOLE},
	{[]byte("Rar!\x1a\x07"), KindRAR},
	{[]byte("7z\xbc\xaf\x27\x1c"), Kind7z},
	{[]byte("\x1f\x8b"), KindGzip},
	{[]byte("\x89PNG\r\n\x1a\n"), KindPNG},
	{[]byte("\xff\xd8\xff"), KindJPEG},
	{[]byte("GIF8"), KindGIF},
	{[]byte("{\\rtf"), KindRTF},
}

// Sniff names the kind of content its first bytes show, or "".
func Sniff(head []byte) string {
	for _, m := range magics {
		if bytes.HasPrefix(head, m.prefix) {
			return m.kind
		}
	}
	return ""
}

// Executable reports a kind that runs as a program.
func Executable(kind string) bool { return kind == KindExe || kind == KindELF || kind == KindMachO }

// ring keeps the last bytes written to it.
type ring struct {
	buf   []byte
	n     int64 // bytes written in all
	start int   // where the oldest kept byte is, once full
}

func (r *ring) reset() { r.n, r.start = 0, 0 }

func (r *ring) Write(p []byte) {
	size := int64(len(r.buf))
	r.n += int64(len(p))
	if int64(len(p)) > size {
		p = p[int64(len(p))-size:]
	}
	// The byte written n-th sits at n % size.
	at := (r.n - int64(len(p))) % size
	k := copy(r.buf[at:], p)
	copy(r.buf, p[k:])
	r.start = int(r.n % size)
}

// kept returns the kept bytes in order and the offset of the first.
func (r *ring) kept() ([]byte, int64) {
	size := int64(len(r.buf))
	if r.n <= size {
		return r.buf[:r.n], 0
	}
	out := make([]byte, 0, size)
	out = append(out, r.buf[r.start:]...)
	out = append(out, r.buf[:r.start]...)
	return out, r.n - size
}
