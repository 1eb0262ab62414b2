package hostilemail

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"strings"
)

// structure: MIME that nests too deep, has too many parts, or is broken.
func structure(o Options) []Message {
	var c []Message
	c = append(c, Clean("clean-first", o.Local))

	// 200 levels of multipart/mixed, a text leaf at the bottom.
	const depth = 200
	var nest strings.Builder
	nest.WriteString(header("mime nesting 200", "MIME-Version: 1.0"))
	for i := 0; i < depth; i++ {
		fmt.Fprintf(&nest, "Content-Type: multipart/mixed; boundary=\"n%03d\"\r\n\r\n--n%03d\r\n", i, i)
	}
	nest.WriteString("Content-Type: text/plain\r\n\r\nthe bottom\r\n")
	for i := depth - 1; i >= 0; i-- {
		fmt.Fprintf(&nest, "--n%03d--\r\n", i)
	}
	c = append(c, msg("mime-nest-200", "multipart/mixed nested 200 levels deep", nest.String()))

	// 200 levels of message/rfc822, each a forwarded message.
	var fwd strings.Builder
	fwd.WriteString(header("rfc822 nesting 200", "MIME-Version: 1.0"))
	for i := 0; i < depth; i++ {
		fmt.Fprintf(&fwd, "Content-Type: message/rfc822\r\n\r\nFrom: <level%d@example.org>\r\nSubject: level %d\r\nMIME-Version: 1.0\r\n", i, i)
	}
	fwd.WriteString("Content-Type: text/plain\r\n\r\nthe bottom\r\n")
	c = append(c, msg("rfc822-nest-200", "message/rfc822 nested 200 levels deep", fwd.String()))

	// 5,000 tiny parts.
	var many strings.Builder
	many.WriteString(header("5000 parts", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=\"p\""))
	for i := 0; i < 5000; i++ {
		fmt.Fprintf(&many, "\r\n--p\r\nContent-Type: text/plain\r\n\r\npart %d", i)
	}
	many.WriteString("\r\n--p--\r\n")
	c = append(c, msg("parts-5000", "5,000 tiny parts in one multipart", many.String()))

	// Broken boundaries: never closed, a child reusing its parent's, one
	// of 5,000 characters, a multipart without one, one that is empty.
	long := strings.Repeat("B", 5000)
	c = append(c, msg("boundary-broken", "boundaries never closed, reused by a child, 5,000 characters long, missing, empty",
		header("broken boundaries", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=\"outer\"")+
			"\r\n--outer\r\nContent-Type: multipart/alternative; boundary=\"outer\"\r\n\r\n--outer\r\nContent-Type: text/plain\r\n\r\nchild using the parent's boundary\r\n"+
			"--outer\r\nContent-Type: multipart/related; boundary=\""+long+"\"\r\n\r\n--"+long+"\r\nContent-Type: text/html\r\n\r\n<p>long boundary</p>\r\n"+
			"--outer\r\nContent-Type: multipart/mixed\r\n\r\nno boundary parameter at all\r\n"+
			"--outer\r\nContent-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\nempty boundary\r\n--\r\n"+
			"--outer\r\nContent-Type: multipart/mixed; boundary=\"never-closed\"\r\n\r\n--never-closed\r\nContent-Type: text/plain\r\n\r\nand it ends here\r\n"))

	// RFC 2231 continuations: a file name in 10,000 pieces, then a
	// parameter list of 10,000 parameters.
	var cont strings.Builder
	cont.WriteString(header("rfc2231 pieces", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=\"r\""))
	cont.WriteString("\r\n--r\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment")
	for i := 0; i < 10000; i++ {
		fmt.Fprintf(&cont, ";\r\n filename*%d*=%%41", i)
	}
	cont.WriteString("\r\nX-Params: x")
	for i := 0; i < 10000; i++ {
		fmt.Fprintf(&cont, "; p%d=v", i)
	}
	cont.WriteString("\r\n\r\naGVsbG8=\r\n--r--\r\n")
	c = append(c, msg("rfc2231-10000", "a file name in 10,000 RFC 2231 pieces and 10,000 parameters", cont.String()))

	// Encodings gone wrong: base64 that is all junk, quoted-printable
	// with '=' everywhere and a soft-broken line of 1 MB, an unknown
	// transfer encoding.
	c = append(c, Message{Name: "encoding-junk", What: "base64 of junk characters, quoted-printable of '=' and a 1 MB soft-broken line, an unknown encoding", Write: buffered(func(w *bufio.Writer) {
		w.WriteString(header("encodings", "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=\"e\""))
		w.WriteString("\r\n--e\r\nContent-Type: application/octet-stream; name=\"junk.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
		repeat(w, "!@#$%^&*()_-{}[]|\\:;'<>,.?~`!@#$%^&*()_-{}[]|\\:;'<>,.?~`!@#$%^&*()_-{}[]|\r\n", 256<<10)
		w.WriteString("--e\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n")
		repeat(w, "=3D=\r\n==X=\r\n=\r\n", 64<<10)
		repeat(w, "=41=42=43=", 1<<20)
		w.WriteString("\r\n--e\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-unheard-of\r\n\r\nwhat\r\n--e--\r\n")
	})})

	// A worm's signature line buried in the twentieth nested part: the
	// virus filter searches the raw body, nesting changes nothing.
	var worm strings.Builder
	worm.WriteString(header("worm deep", "MIME-Version: 1.0"))
	for i := 0; i < 19; i++ {
		fmt.Fprintf(&worm, "Content-Type: multipart/mixed; boundary=\"w%02d\"\r\n\r\n--w%02d\r\n", i, i)
	}
	worm.WriteString("Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + o.Signature + "\r\n")
	for i := 18; i >= 0; i-- {
		fmt.Fprintf(&worm, "--w%02d--\r\n", i)
	}
	c = append(c, msg("worm-nested-19", "a worm's signature line in a part 19 levels deep", worm.String()))

	// The scanner's test file attached 15 levels deep, in 8-bit junk.
	var deep strings.Builder
	deep.WriteString(header("virus deep", "MIME-Version: 1.0"))
	for i := 0; i < 15; i++ {
		fmt.Fprintf(&deep, "Content-Type: multipart/mixed; boundary=\"v%02d\"\r\n\r\n\xff\xfe junk before the part\r\n--v%02d\r\n", i, i)
	}
	deep.WriteString("Content-Type: application/octet-stream; name=\"invoice.com\"\r\nContent-Disposition: attachment; filename=\"invoice.com\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" + base64.StdEncoding.EncodeToString([]byte(o.Virus)) + "\r\n")
	for i := 14; i >= 0; i-- {
		fmt.Fprintf(&deep, "--v%02d--\r\n", i)
	}
	c = append(c, msg("virus-nested-15", "the virus scanner's test file attached 15 levels deep, 8-bit junk in every preamble", deep.String()))
	return c
}

// msg is a message of fixed content.
func msg(name, what, content string) Message {
	return Message{Name: name, What: what, Write: text(content)}
}
