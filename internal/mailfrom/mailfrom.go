// Package mailfrom reads the ESMTP parameters a client gave with MAIL FROM
// (RFC 5321 §4.1.2), as the MTA passes them to the milter: one reading of
// each, so every filter believes the same thing.
package mailfrom

import (
	"math"
	"strings"
)

// DeclaredSize is the message size the client announced with SIZE=
// (RFC 1870 §5: size-value ::= 1*20DIGIT), the first such parameter.
// ok is false when there is none or it is not such a number (a sign, a
// blank, junk); a number past int64 is math.MaxInt64, as big as can be.
func DeclaredSize(args string) (size int64, ok bool) {
	for _, a := range strings.Fields(args) {
		if len(a) < 5 || !strings.EqualFold(a[:5], "SIZE=") {
			continue
		}
		v := a[5:]
		if v == "" || len(v) > 20 {
			return 0, false
		}
		for _, c := range []byte(v) {
			if c < '0' || c > '9' {
				return 0, false
			}
			d := int64(c - '0')
			if size > (math.MaxInt64-d)/10 {
				size = math.MaxInt64
				break
			}
			size = size*10 + d
		}
		return size, true
	}
	return 0, false
}
