// Package oneline keeps text that came from outside (a sender, a client,
// clamd, a configuration) on one line of bounded length before it goes
// where a line break would be read as structure: a header field mailguard
// writes or asks the MTA to add, an SMTP reply. It is the one place these
// rules live, so every writer applies the same ones.
package oneline

// Header keeps s fit for a header field's value: control characters
// (CR, LF and NUL among them) and DEL become blanks; a tab stays, as does
// 8-bit text (bytes, not runes: nothing is re-encoded). s is cut at max
// bytes; max <= 0 is no bound.
func Header(s string, max int) string {
	return mapBytes(s, max, func(c byte) byte {
		if c < ' ' && c != '\t' || c == 0x7f {
			return ' '
		}
		return c
	})
}

// ASCII keeps s fit for an SMTP reply line: every byte that is not
// printable ASCII (0x20 to 0x7e) becomes repl. s is cut at max bytes;
// max <= 0 is no bound.
func ASCII(s string, max int, repl byte) string {
	return mapBytes(s, max, func(c byte) byte {
		if c < 0x20 || c > 0x7e {
			return repl
		}
		return c
	})
}

// mapBytes cuts s at max bytes and maps each byte, copying only when a
// byte changes or s is cut.
func mapBytes(s string, max int, f func(byte) byte) string {
	if max > 0 && len(s) > max {
		s = s[:max]
	}
	for i := 0; i < len(s); i++ {
		if f(s[i]) != s[i] {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				b[j] = f(b[j])
			}
			return string(b)
		}
	}
	return s
}
