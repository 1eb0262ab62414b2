package hostilemail

import (
	"bufio"
	"fmt"
	"strings"
)

// lines: giant and strange lines, in the header and in the body.
func lines(o Options) []Message {
	return []Message{
		{Name: "header-line-1m", What: "one header field of 1 MB on one line", Write: buffered(func(w *bufio.Writer) {
			w.WriteString(header("header line 1m"))
			w.WriteString("X-Junk: ")
			repeat(w, "abcdefghijklmnopqrstuvwxyz0123456789", 1<<20)
			w.WriteString("\r\n\r\nbody\r\n")
		})},
		{Name: "header-folded-1m", What: "a Subject of 1 MB folded over 30,000 lines", Write: buffered(func(w *bufio.Writer) {
			w.WriteString(header("folded", "Subject: start"))
			repeat(w, " =?utf-8?b?w7bDpMO8w7bDpMO8?= folded\r\n", 1<<20)
			w.WriteString("\r\nbody\r\n")
		})},
		{Name: "header-fields", What: fmt.Sprintf("%d short header fields", o.Fields), Write: buffered(func(w *bufio.Writer) {
			w.WriteString(header("many fields"))
			for i := 0; i < o.Fields; i++ {
				fmt.Fprintf(w, "X-F%d: v\r\n", i)
			}
			w.WriteString("\r\nbody\r\n")
		})},
		{Name: "part-header-9000", What: "a part header of 9,000 short fields (under the 10,000 limit), then the name setup.exe", Write: buffered(func(w *bufio.Writer) {
			w.WriteString(header("part header 9000", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=\"h\""))
			w.WriteString("\r\n--h\r\nContent-Type: application/octet-stream\r\n")
			for i := 0; i < 9000; i++ {
				fmt.Fprintf(w, "X-F%d: v\r\n", i)
			}
			w.WriteString("Content-Disposition: attachment; filename=\"setup.exe\"\r\n\r\nTVqQAAMAAAAEAAAA\r\n--h--\r\n")
		})},
		{Name: "body-line-1m", What: "a body line of 1 MB", Write: buffered(func(w *bufio.Writer) {
			w.WriteString(header("body line 1m") + "\r\n")
			repeat(w, "0123456789abcdef", 1<<20)
			w.WriteString("\r\n")
		})},
		{Name: "nul-bytes", What: "NUL bytes in a header name, a header value and all through the body", Write: buffered(func(w *bufio.Writer) {
			w.WriteString(header("nul\x00bytes", "X-N\x00ul: a\x00b\x00c", "Content-Type: text/plain; name=\"a\x00.exe\""))
			w.WriteString("\r\n")
			repeat(w, "\x00\x00text\x00with\x00NULs\x00\r\n", 300<<10)
		})},
		{Name: "8bit-junk", What: "random bytes (all 256 values, bare CR and LF among them) in header values and a 1 MB body", Write: buffered(func(w *bufio.Writer) {
			r := rng(23)
			junk := make([]byte, 1<<20)
			r.fill(junk)
			w.WriteString(header("8bit"))
			for i := 0; i < 50; i++ {
				// Header values of junk without CR or LF (those would end
				// the header section early); the body gets everything.
				v := strings.Map(func(c rune) rune {
					if c == '\r' || c == '\n' {
						return 'x'
					}
					return c
				}, string(junk[i*100:i*100+100]))
				fmt.Fprintf(w, "X-Junk-%d: %s\r\n", i, v)
			}
			w.WriteString("Subject: \xff\xfe\xe9t\xe9 \xc3\x28 \xed\xa0\x80\r\n\r\n")
			w.Write(junk)
			w.WriteString("\r\n")
		})},
		{Name: "bare-line-ends", What: "lines ended by bare LF and bare CR, and a lone dot after a bare LF", Write: buffered(func(w *bufio.Writer) {
			w.WriteString("From: <sender@example.org>\nTo: <user@example.edu>\rSubject: bare\n\n")
			repeat(w, "a bare LF line\na bare CR line\r\n.\nafter a dot\n", 200<<10)
			w.WriteString("\r\n")
		})},
		{Name: "header-only", What: "a header section and no body, not even a blank line", Write: text("From: <sender@example.org>\r\nTo: <user@example.edu>\r\nSubject: header only\r\n")},
		{Name: "from-10000", What: "a header From: of 10,000 addresses, a blocked one last (the senders filter checks 32)", Write: buffered(func(w *bufio.Writer) {
			w.WriteString("From: ")
			for i := 0; i < 9999; i++ {
				fmt.Fprintf(w, "\"Person %d\" <p%d@example.org>,\r\n ", i, i)
			}
			w.WriteString("<" + o.Blocked + ">\r\nTo: <user@example.edu>\r\nSubject: many from\r\n\r\nbody\r\n")
		})},
		{Name: "from-blocked", What: "a header From: the recipient blocks (control for the senders filter)",
			Write: text("From: \"Pest\" <" + o.Blocked + ">\r\nTo: <user@example.edu>\r\nSubject: blocked\r\n\r\nbody\r\n")},
	}
}
