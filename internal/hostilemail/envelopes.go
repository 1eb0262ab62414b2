package hostilemail

import (
	"fmt"
	"strings"
)

// envelopes: thousands of recipients and addresses meant to become paths,
// shell words or broken log lines.
func envelopes(o Options) []Message {
	body := text(header("envelope") + "\r\nA plain message with a hostile envelope.\r\n")
	rcpts := make([]string, o.Recipients)
	for i := range rcpts {
		rcpts[i] = fmt.Sprintf("r%05d@%s", i, o.Remote)
	}
	at := func(local string) string { return local + "@" + o.Remote }
	long := func(n int) string { return strings.Repeat("x", n) }
	return []Message{
		{Name: "rcpt-many", What: fmt.Sprintf("%d recipients", o.Recipients), To: rcpts, Write: body},
		{Name: "addr-traversal", What: "../../etc/passwd as sender and recipient local parts, and URL-encoded",
			From: "../../etc/passwd@x.example", To: []string{at("../../etc/passwd"), at("..%2f..%2fetc%2fshadow"), at("..\\..\\boot.ini"), o.Local}, Write: body},
		{Name: "addr-long-sender-300", What: "a sender of 300 bytes (over RFC 5321's 254)",
			From: long(288) + "@x.example", Write: body},
		{Name: "addr-long-rcpt-300", What: "a recipient of 300 bytes beside a normal one",
			To: []string{at(long(300 - len(o.Remote) - 1)), o.Local}, Write: body},
		{Name: "addr-long-sender-4000", What: "a sender of 4,000 bytes (over the MTA's line length)",
			From: long(3990) + "@x.example", Write: body},
		{Name: "addr-quoted", What: "quoted local parts with blanks, quotes, slashes and shell words",
			From: `"a\"b c; rm -rf /"@x.example`, To: []string{at(`"../../tmp/x y"`), at(`"$(reboot)"`), o.Local}, Write: body},
		{Name: "addr-nul", What: "a NUL byte inside the sender and a recipient",
			From: "a\x00b@x.example", To: []string{at("c\x00d"), o.Local}, Write: body},
		{Name: "addr-cr", What: "a bare CR inside the sender and a recipient",
			From: "a\rb@x.example", To: []string{at("c\rd"), o.Local}, Write: body},
		{Name: "addr-unicode", What: "UTF-8 addresses with SMTPUTF8", Params: "SMTPUTF8",
			From: "jörg@exämple.test", To: []string{at("ü-ñ-日本"), o.Local}, Write: body},
		{Name: "addr-unicode-8bit", What: "UTF-8 and Latin-1 addresses without SMTPUTF8",
			From: "j\xf6rg@x.example", To: []string{at("\xfc\xff"), o.Local}, Write: body},
		{Name: "addr-routes", What: "source routes, % and ! addresses",
			From: "@a.example,@b.example:s@x.example", To: []string{"@a.example:" + at("route"), at("user%other.example"), at("bang!user"), o.Local}, Write: body},
		{Name: "addr-null-sender", What: "a bounce (MAIL FROM:<>) to hostile recipients", NullSender: true,
			To: []string{at("postmaster/../../x"), at("*"), o.Local}, Write: body},
	}
}
