package hostilemail

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
)

// sizes: bodies and attachments far larger than mail usually is.
func sizes(o Options) []Message {
	big := func(name, what, last string) Message {
		return Message{Name: name, What: what, Write: buffered(func(w *bufio.Writer) {
			w.WriteString(header(name) + "\r\n")
			repeat(w, "The quick brown fox jumps over the lazy dog, again and again and again.\r\n", o.Big)
			w.WriteString(last)
		})}
	}
	return []Message{
		big("big-body", fmt.Sprintf("a plain body of %d MiB", o.Big>>20), ""),
		big("big-body-worm-last", fmt.Sprintf("a plain body of %d MiB, a worm's signature line at its very end", o.Big>>20), o.Signature+"\r\n"),
		{Name: "big-attachment", What: fmt.Sprintf("a base64 attachment of %d MiB (random bytes named report.pdf)", o.Attachment>>20),
			Write: bigAttachment("report.pdf", o.Attachment)},
		{Name: "big-attachment-exe", What: fmt.Sprintf("a base64 attachment of %d MiB named setup.exe", o.Attachment>>20),
			Write: bigAttachment("setup.exe", o.Attachment)},
		{Name: "size-declared-100m", What: "MAIL FROM with SIZE=104857600, over the MTA's message_size_limit",
			Params: "SIZE=104857600", Write: text(header("declared size") + "\r\nsmall really\r\n")},
	}
}

// bigAttachment is a message carrying size bytes of base64 (random data)
// as the attachment name.
func bigAttachment(name string, size int64) func(io.Writer) error {
	return buffered(func(w *bufio.Writer) {
		w.WriteString(header("attachment "+name, "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=\"a\""))
		w.WriteString("\r\n--a\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--a\r\nContent-Type: application/octet-stream; name=\"" + name +
			"\"\r\nContent-Disposition: attachment; filename=\"" + name + "\"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
		r := rng(7)
		raw := make([]byte, 57)
		line := make([]byte, 78)
		for written := int64(0); written < size; written += 78 {
			r.fill(raw)
			base64.StdEncoding.Encode(line, raw)
			line[76], line[77] = '\r', '\n'
			w.Write(line)
		}
		w.WriteString("--a--\r\n")
	})
}
