package hostilemail

import (
	"archive/zip"
	"bufio"
	"bytes"
	"compress/flate"
	"encoding/base64"
	"fmt"
	"io"
)

// archives: zip bombs of every sort, as attachments.
func archives(o Options) []Message {
	zipped := func(name, what string, build func() []byte) Message {
		return Message{Name: name, What: what, Write: func(w io.Writer) error {
			return attach(w, name, "files.zip", "application/zip", build())
		}}
	}
	return []Message{
		zipped("zip-declared-huge", "a zip of 10 small files each declaring 2^62 bytes (zip64) and one declaring 4 GiB", func() []byte {
			var b bytes.Buffer
			zw := zip.NewWriter(&b)
			for i := 0; i < 11; i++ {
				content := []byte("tiny\r\n")
				h := &zip.FileHeader{Name: fmt.Sprintf("huge-%02d.txt", i), Method: zip.Store,
					CRC32: 0x12345678, CompressedSize64: uint64(len(content)), UncompressedSize64: 1 << 62}
				if i == 10 {
					h.UncompressedSize64 = 1<<32 - 1
				}
				fw, _ := zw.CreateRaw(h)
				fw.Write(content)
			}
			zw.Close()
			return b.Bytes()
		}),
		zipped("zip-names", fmt.Sprintf("a zip of %d empty files", o.ZipNames), func() []byte {
			var b bytes.Buffer
			zw := zip.NewWriter(&b)
			for i := 0; i < o.ZipNames; i++ {
				zw.CreateHeader(&zip.FileHeader{Name: fmt.Sprintf("file-%05d.txt", i), Method: zip.Store})
			}
			zw.Close()
			return b.Bytes()
		}),
		zipped("zip-deflate-bomb", fmt.Sprintf("a zip of one file of %d MiB of zeros, deflated to about %d KiB", o.Zeros, o.Zeros), func() []byte {
			var b bytes.Buffer
			zw := zip.NewWriter(&b)
			zw.RegisterCompressor(zip.Deflate, func(out io.Writer) (io.WriteCloser, error) {
				return flate.NewWriter(out, flate.BestSpeed)
			})
			fw, _ := zw.CreateHeader(&zip.FileHeader{Name: "zeros.txt", Method: zip.Deflate})
			zeros := make([]byte, 1<<20)
			for i := 0; i < o.Zeros; i++ {
				fw.Write(zeros)
			}
			zw.Close()
			return b.Bytes()
		}),
		zipped("zip-nested-20", "zips nested 20 deep, a program named evil.exe at the bottom", func() []byte {
			inner := []byte("MZ\x90\x00not really a program\r\n")
			name := "evil.exe"
			for i := 0; i < 20; i++ {
				var b bytes.Buffer
				zw := zip.NewWriter(&b)
				fw, _ := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Store})
				fw.Write(inner)
				zw.Close()
				inner, name = b.Bytes(), fmt.Sprintf("level-%02d.zip", i)
			}
			return inner
		}),
		zipped("zip-traversal-names", "a zip whose names are ../../etc/passwd, /etc/shadow, NUL and CR tricks, and 64 KiB long", func() []byte {
			var b bytes.Buffer
			zw := zip.NewWriter(&b)
			long := string(bytes.Repeat([]byte("a/"), 32<<10))
			for _, n := range []string{"../../etc/passwd", "/etc/shadow", "..\\..\\windows\\system32\\x.dll", "a\x00b.txt", "c\rd.txt", long[:65000] + ".txt"} {
				fw, _ := zw.CreateHeader(&zip.FileHeader{Name: n, Method: zip.Store})
				fw.Write([]byte("x"))
			}
			zw.Close()
			return b.Bytes()
		}),
		zipped("zip-exe", "a zip holding evil.exe (control for the names inside archives)", func() []byte {
			var b bytes.Buffer
			zw := zip.NewWriter(&b)
			fw, _ := zw.CreateHeader(&zip.FileHeader{Name: "evil.exe", Method: zip.Store})
			fw.Write([]byte("MZ\x90\x00"))
			zw.Close()
			return b.Bytes()
		}),
		zipped("zip-truncated", "a zip cut in half: local headers, no central directory", func() []byte {
			var b bytes.Buffer
			zw := zip.NewWriter(&b)
			for i := 0; i < 100; i++ {
				fw, _ := zw.CreateHeader(&zip.FileHeader{Name: fmt.Sprintf("part-%d.txt", i), Method: zip.Store})
				fw.Write(bytes.Repeat([]byte("x"), 100))
			}
			zw.Close()
			return b.Bytes()[:b.Len()/2]
		}),
	}
}

// attach writes a message with data attached under file name.
func attach(out io.Writer, subject, name, ctype string, data []byte) error {
	w := bufio.NewWriterSize(out, 64<<10)
	w.WriteString(header(subject, "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=\"z\""))
	w.WriteString("\r\n--z\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--z\r\nContent-Type: " + ctype + "; name=\"" + name +
		"\"\r\nContent-Disposition: attachment; filename=\"" + name + "\"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	enc := base64.StdEncoding.EncodeToString(data)
	for len(enc) > 76 {
		w.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	w.WriteString(enc + "\r\n--z--\r\n")
	return w.Flush()
}
