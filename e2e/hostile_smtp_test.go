package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"time"

	"mailguard/internal/hostilemail"
)

// smtpReply is one SMTP reply: its code and the enhanced code and text of
// its last line.
type smtpReply struct {
	Code int
	Text string
}

// short is the code and the enhanced code, and for a refusal its text,
// which says whose it is (Postfix's or mailguard's).
func (r smtpReply) short() string {
	if r.Code == 0 {
		return "none"
	}
	s := fmt.Sprint(r.Code)
	enh, _, _ := strings.Cut(r.Text, " ")
	if len(enh) >= 5 && enh[1] == '.' && (enh[0] == '2' || enh[0] == '4' || enh[0] == '5') {
		s += " " + enh
	}
	if r.Code >= 400 {
		s = fmt.Sprintf("%d %s", r.Code, r.Text)
	}
	return s
}

// smtpTranscript is what the server answered to one hostile transaction.
type smtpTranscript struct {
	Mail  smtpReply
	Rcpts []smtpReply
	Data  smtpReply // the reply to DATA (354)
	End   smtpReply // the reply to the final dot
	Err   error     // the connection failed (closed by the server, say)
	Sent  int64     // bytes of content sent after DATA (before dot-stuffing)
}

// Outcome sums the transcript up: "MAIL 501 5.1.7", or "RCPT 250 2.1.5 x2,
// 501 5.1.3 x1; END 250 2.0.0". Every message of the corpus states the
// outcome it must get.
func (tr smtpTranscript) Outcome() string {
	if tr.Mail.Code != 250 {
		return "MAIL " + tr.Mail.short() + tr.errText()
	}
	counts := map[string]int{}
	for _, r := range tr.Rcpts {
		counts[r.short()]++
	}
	var keys []string
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s x%d", k, counts[k]))
	}
	out := "RCPT " + strings.Join(parts, ", ")
	if tr.Data.Code != 0 && tr.Data.Code != 354 {
		out += "; DATA " + tr.Data.short()
	}
	if tr.End.Code != 0 {
		out += "; END " + tr.End.short()
	}
	return out + tr.errText()
}

func (tr smtpTranscript) errText() string {
	if tr.Err != nil {
		return "; connection: " + tr.Err.Error()
	}
	return ""
}

// Accepted says whether the server took the message (250 to the dot).
func (tr smtpTranscript) Accepted() bool { return tr.End.Code == 250 }

// sendRaw sends m to an SMTP server on loopback port as it is: envelope
// bytes unchecked (NUL, CR, 8-bit), content dot-stuffed but otherwise
// untouched. swaks and smtplib refuse or repair such input, hence a
// client of our own.
func sendRaw(port int, m hostilemail.Message) smtpTranscript {
	var tr smtpTranscript
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second)
	if err != nil {
		tr.Err = err
		return tr
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	r := bufio.NewReaderSize(c, 4096)
	w := bufio.NewWriterSize(c, 64<<10)
	command := func(line string) (smtpReply, error) {
		if line != "" {
			w.WriteString(line + "\r\n")
			if err := w.Flush(); err != nil {
				return smtpReply{}, err
			}
		}
		return readReply(r)
	}
	fail := func(err error) smtpTranscript {
		if err == io.EOF {
			err = fmt.Errorf("closed by the server")
		}
		tr.Err = err
		return tr
	}
	if _, err := command(""); err != nil {
		return fail(err)
	}
	if _, err := command("EHLO client.example.org"); err != nil {
		return fail(err)
	}
	from := "<" + m.From + ">"
	if m.NullSender {
		from = "<>"
	}
	if m.Params != "" {
		from += " " + m.Params
	}
	if tr.Mail, err = command("MAIL FROM:" + from); err != nil {
		return fail(err)
	}
	if tr.Mail.Code != 250 {
		command("QUIT")
		return tr
	}
	accepted := false
	for _, to := range m.To {
		reply, err := command("RCPT TO:<" + to + ">")
		if err != nil {
			return fail(err)
		}
		tr.Rcpts = append(tr.Rcpts, reply)
		accepted = accepted || reply.Code == 250
	}
	if !accepted {
		command("QUIT")
		return tr
	}
	if tr.Data, err = command("DATA"); err != nil || tr.Data.Code != 354 {
		if err != nil {
			return fail(err)
		}
		return tr
	}
	stuffer := &dotStuffer{w: w, lineStart: true}
	if err := m.Write(stuffer); err != nil {
		return fail(err)
	}
	tr.Sent = stuffer.n
	if !stuffer.lineStart || stuffer.last != '\n' || stuffer.prev != '\r' {
		w.WriteString("\r\n")
	}
	if tr.End, err = command("."); err != nil {
		return fail(err)
	}
	command("QUIT")
	return tr
}

// readReply reads one (possibly multi-line) reply.
func readReply(r *bufio.Reader) (smtpReply, error) {
	var reply smtpReply
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return reply, err
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return reply, fmt.Errorf("bad reply line %q", line)
		}
		fmt.Sscan(line[:3], &reply.Code)
		if len(line) > 4 {
			reply.Text = line[4:]
		}
		if len(line) == 3 || line[3] != '-' {
			return reply, nil
		}
	}
}

// dotStuffer doubles a dot that starts a line (after CRLF or a bare LF,
// as Postfix reads lines).
type dotStuffer struct {
	w          *bufio.Writer
	lineStart  bool
	prev, last byte
	n          int64 // bytes written to it
}

func (d *dotStuffer) Write(p []byte) (int, error) {
	d.n += int64(len(p))
	start := 0
	for i, c := range p {
		if d.lineStart && c == '.' {
			if _, err := d.w.Write(p[start:i]); err != nil {
				return start, err
			}
			d.w.WriteByte('.')
			start = i
		}
		d.lineStart = c == '\n'
		d.prev, d.last = d.last, c
	}
	_, err := d.w.Write(p[start:])
	return len(p), err
}
