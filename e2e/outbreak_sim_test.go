package e2e

import (
	"bytes"
	"encoding/base64"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mailguard/internal/loadgen"
)

var outbreakFull = flag.Bool("outbreak.full", false, "TestOutbreakSimulationThroughPostfix at full size: 300 worm copies, 1,000 clean messages, a 300-copy newsletter")

// xclientSend sends one message through Postfix as client addr (XCLIENT)
// and returns the reply to the end of DATA ("250 ...", "451 ...").
func xclientSend(port int, addr, from string, msg []byte) (string, error) {
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	c := textproto.NewConn(conn)
	step := func(want int, format string, args ...any) (string, error) {
		if format != "" {
			if err := c.PrintfLine(format, args...); err != nil {
				return "", err
			}
		}
		code, text, err := c.ReadResponse(want)
		return fmt.Sprintf("%d %s", code, text), err
	}
	for _, s := range []struct {
		want int
		cmd  string
		args []any
	}{
		{220, "", nil}, {250, "EHLO client.test", nil}, {220, "XCLIENT ADDR=%s NAME=[UNAVAILABLE]", []any{addr}},
		{250, "EHLO client.test", nil}, {250, "MAIL FROM:<%s>", []any{from}}, {250, "RCPT TO:<user@example.edu>", nil}, {354, "DATA", nil},
	} {
		if reply, err := step(s.want, s.cmd, s.args...); err != nil {
			return reply, err
		}
	}
	w := c.DotWriter()
	w.Write(bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n")))
	w.Close()
	reply, _ := step(0, "")
	c.PrintfLine("QUIT")
	return reply, nil
}

func attachmentMail(from, name, ctype string, data []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <user@example.edu>\r\nSubject: files\r\nMIME-Version: 1.0\r\n", from)
	b.WriteString("Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n")
	fmt.Fprintf(&b, "--b1\r\nContent-Type: %s; name=\"%s\"\r\nContent-Disposition: attachment; filename=\"%s\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", ctype, name, name)
	enc := base64.StdEncoding.EncodeToString(data)
	for len(enc) > 0 {
		n := min(76, len(enc))
		b.WriteString(enc[:n] + "\r\n")
		enc = enc[n:]
	}
	b.WriteString("--b1--\r\n")
	return b.Bytes()
}

// TestOutbreakSimulationThroughPostfix: the simulation of the outbreak
// filter's tests, through a real Postfix that XCLIENT makes see a new
// client for each message: worm copies from a network each, clean mail
// with risky attachments of its own, a newsletter from one network, a
// document from 5, mixed. At most min_networks (+1) worm copies are
// delivered, nothing else is held. With -args -outbreak.full, at the
// full size.
func TestOutbreakSimulationThroughPostfix(t *testing.T) {
	const minNetworks = 10
	worms, clean, newsletter, document := 40, 100, 40, 20
	if *outbreakFull {
		worms, clean, newsletter, document = 300, 1000, 300, 20
	}
	d := startMailguard(t, fmt.Sprintf("listen = \"LISTEN\"\nfilters = [\"outbreak\"]\n[outbreak]\nmin_networks = %d\nsamples = \"samples\"\n", minNetworks), nil)
	p := startPostfixConf(t, false, "smtpd_authorized_xclient_hosts = 127.0.0.0/8\n", fmt.Sprintf("inet:127.0.0.1:%d", d.port), "user@example.edu")
	dir := t.TempDir()
	if err := loadgen.GenerateWorm(loadgen.WormOptions{Dir: dir, Count: worms, Payload: 41, Size: 20000, Seed: 4, Vary: 4}); err != nil {
		t.Fatal(err)
	}
	type msg struct {
		kind, addr, from string
		data             []byte
	}
	var stream []msg
	files, _ := filepath.Glob(filepath.Join(dir, "worm*.eml"))
	for i, f := range files {
		b, _ := os.ReadFile(f)
		stream = append(stream, msg{"worm", fmt.Sprintf("10.%d.%d.7", i/250, i%250), fmt.Sprintf("x%d@forged%d.example", i, i), b})
	}
	r := rand.New(rand.NewPCG(5, 5))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	for i := 0; i < clean; i++ {
		name, ctype, data := fmt.Sprintf("photos%d.zip", i), "application/zip", append([]byte("PK\x03\x04"), random(5000+r.IntN(15000))...)
		if i%2 == 1 {
			name, ctype, data = fmt.Sprintf("page%d.html", i), "text/html", []byte(fmt.Sprintf("<html>%x</html>", random(3000)))
		}
		from := fmt.Sprintf("person%d@example.org", i)
		stream = append(stream, msg{"clean", fmt.Sprintf("172.%d.%d.9", 16+i%16, i/16%256), from, attachmentMail(from, name, ctype, data)})
	}
	news := attachmentMail("news@lists.example.com", "issue42.html", "text/html", []byte(fmt.Sprintf("<html>%x</html>", random(6000))))
	for i := 0; i < newsletter; i++ {
		stream = append(stream, msg{"newsletter", fmt.Sprintf("198.51.100.%d", 1+i%200), "bounces@lists.example.com", news})
	}
	doc := attachmentMail("colleague@partner.example", "plan.docx", "application/zip", append([]byte("PK\x03\x04"), random(30000)...))
	for i := 0; i < document; i++ {
		stream = append(stream, msg{"document", fmt.Sprintf("203.0.%d.%d", 110+i%5, 1+i), fmt.Sprintf("colleague%d@partner%d.example", i, i%5), doc})
	}
	r.Shuffle(len(stream), func(i, j int) { stream[i], stream[j] = stream[j], stream[i] })

	accepted, held := map[string]int{}, map[string]int{}
	start := time.Now()
	for _, m := range stream {
		reply, err := xclientSend(p.port, m.addr, m.from, m.data)
		switch {
		case err != nil:
			t.Fatalf("%s from %s: %v (%s)", m.kind, m.addr, err, reply)
		case strings.HasPrefix(reply, "250 "):
			accepted[m.kind]++
		case strings.HasPrefix(reply, "451 4.7.1"):
			held[m.kind]++
		default:
			t.Fatalf("%s from %s: %s", m.kind, m.addr, reply)
		}
	}
	for _, k := range []string{"worm", "clean", "newsletter", "document"} {
		t.Logf("%-10s accepted %4d, held %4d", k, accepted[k], held[k])
	}
	t.Logf("%d messages through Postfix in %s", len(stream), time.Since(start).Round(time.Millisecond))
	if accepted["worm"] > minNetworks+1 || held["worm"] != worms-accepted["worm"] {
		t.Errorf("worm: %d accepted, %d held", accepted["worm"], held["worm"])
	}
	for _, k := range []string{"clean", "newsletter", "document"} {
		if held[k] != 0 {
			t.Errorf("%s: %d held", k, held[k])
		}
	}
	want := len(stream) - held["worm"]
	if got := len(p.delivered(t, "user", want)); got != want {
		t.Errorf("%d delivered, want %d", got, want)
	}
	samples, _ := filepath.Glob(filepath.Join(d.dir, "samples", "new", "*"))
	if len(samples) != min(50, worms) {
		t.Errorf("%d samples", len(samples))
	}
}
