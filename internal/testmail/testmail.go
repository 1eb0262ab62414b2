// Package testmail builds the MIME pieces tests send: attachment bodies
// in base64 and quoted-printable, as mail clients write them.
package testmail

import (
	"bytes"
	"encoding/base64"
	"mime/quotedprintable"
	"strings"
)

// Base64 encodes data in lines of 76 characters, each ending in CRLF.
func Base64(data []byte) string {
	s := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	for len(s) > 76 {
		b.WriteString(s[:76] + "\r\n")
		s = s[76:]
	}
	return b.String() + s + "\r\n"
}

// QuotedPrintable encodes data as binary quoted-printable (line ends
// encoded too), ending in CRLF.
func QuotedPrintable(data []byte) string {
	var b bytes.Buffer
	w := quotedprintable.NewWriter(&b)
	w.Binary = true
	w.Write(data)
	w.Close()
	return b.String() + "\r\n"
}
