// Package loadgen drives a milter over the protocol the way Postfix does,
// replaying a corpus of messages at a chosen concurrency, and measures
// throughput, latency and verdicts. It also writes synthetic corpora.
package loadgen

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"mailguard/internal/message"
)

// Message is one corpus message, split as the MTA would send it.
type Message struct {
	Name   string
	Fields []message.Field
	Body   []byte // CRLF line ends

	// The envelope: "" is sender@example.org; no recipients is the
	// Delivered-To field's, or user@example.edu.
	Sender string
	Rcpts  []string
	// Expect is the verdict the milter should give (as Result.Table names
	// verdicts), "" for none; Class groups messages in the verdict table.
	Expect, Class string
	Stop          Stop
}

// LoadCorpus reads every regular file under dir (or the file itself).
func LoadCorpus(dir string) ([]Message, error) {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("%s: no message files", dir)
	}
	sort.Strings(paths)
	msgs := make([]Message, 0, len(paths))
	for _, p := range paths {
		m, err := loadMessage(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

func loadMessage(path string) (Message, error) {
	f, err := os.Open(path)
	if err != nil {
		return Message{}, err
	}
	defer f.Close()
	r := message.NewReader(f)
	fields, err := r.Header()
	if err != nil {
		return Message{}, err
	}
	var body []byte
	for {
		c, err := r.BodyChunk()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Message{}, err
		}
		body = append(body, c...)
	}
	return Message{Name: path, Fields: fields, Body: body}, nil
}

// GenerateOptions describe a synthetic corpus.
type GenerateOptions struct {
	Dir   string
	Count int
	// Size is the average message size in bytes; sizes vary ±50%.
	Size int
	// Infect, if set, is planted in the attachment of every InfectEvery-th message.
	Infect      []byte
	InfectEvery int
	Seed        uint64
}

// Generate writes a corpus of messages with a short text part and a base64
// attachment, like the mail a site receives (and like worm traffic).
func Generate(o GenerateOptions) error {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(o.Seed, 1))
	for i := 0; i < o.Count; i++ {
		size := o.Size/2 + r.IntN(o.Size+1)
		var infect []byte
		if o.InfectEvery > 0 && len(o.Infect) > 0 && i%o.InfectEvery == o.InfectEvery-1 {
			infect = o.Infect
		}
		msg := synthetic(r, i, size, infect)
		name := filepath.Join(o.Dir, fmt.Sprintf("msg%06d.eml", i))
		if err := os.WriteFile(name, msg, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func synthetic(r *rand.Rand, i, size int, infect []byte) []byte {
	var b bytes.Buffer
	boundary := fmt.Sprintf("=_boundary_%d_%d", i, r.Uint32())
	fmt.Fprintf(&b, "Return-Path: <sender%d@example.org>\r\nDelivered-To: user%d@example.edu\r\n", r.IntN(1000), r.IntN(100))
	fmt.Fprintf(&b, "From: Sender %d <sender%d@example.org>\r\nTo: user@example.edu\r\nSubject: report %d\r\n", i, i, r.Uint32())
	fmt.Fprintf(&b, "Date: Mon, 2 Mar 2026 10:00:00 +0000\r\nMessage-ID: <%d.%d@example.org>\r\nMIME-Version: 1.0\r\n", i, r.Uint64())
	fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nPlease find the report attached.\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: application/octet-stream; name=\"report%d.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", boundary, i)
	raw := make([]byte, max(0, size-b.Len())*3/4)
	for j := range raw {
		raw[j] = byte(r.Uint32())
	}
	enc := base64.StdEncoding.EncodeToString(raw)
	plantAt := -1
	if infect != nil {
		plantAt = len(enc) / 2 / 76
	}
	for line := 0; len(enc) > 0; line++ {
		n := min(76, len(enc))
		if line == plantAt {
			b.Write(infect)
			b.WriteString("\r\n")
		}
		b.WriteString(enc[:n])
		b.WriteString("\r\n")
		enc = enc[n:]
	}
	fmt.Fprintf(&b, "--%s--\r\n", boundary)
	return b.Bytes()
}

// WriteSignatures writes a signature file of count random base64 lines,
// like real worm signatures, for measuring with many signatures loaded.
func WriteSignatures(w io.Writer, count, minLen, maxLen int, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 2))
	for i := 0; i < count; i++ {
		n := minLen + r.IntN(maxLen-minLen+1)
		raw := make([]byte, n)
		for j := range raw {
			raw[j] = byte(r.Uint32())
		}
		fmt.Fprintf(w, "SYNTHETIC_%05d =\n%s\n", i, base64.StdEncoding.EncodeToString(raw)[:n])
	}
}

// The soak mix: mixed traffic with every message's expected verdict, and
// the daemon's data (signatures, users and their Maildirs, blocklists)
// that make those verdicts the right ones. The verdicts follow from the
// configuration MixConfig writes; change one, change the other.

// Replies the mix expects, as the milter gives them.
const (
	ReplyVirus       = "550 5.7.0 VIRUS FOUND"
	ReplyClamd       = "550 5.7.0 VIRUS FOUND: " // followed by clamd's name for what it found
	ReplyAttachment  = "550 5.7.0 Attachment refused: setup.exe"
	ReplyMailboxFull = "552 5.2.2 Mailbox full"
	ReplySender      = "550 5.7.1 Sender blocked by recipient"
	ReplyAccess      = "550 5.7.1 Access denied"
	ReplyListed      = "550 5.7.1 Service unavailable; client [%s] blocked using %s"
	ReplyRateLimit   = "451 4.7.1 Rate limit exceeded, try again later"
	ReplyHeld        = "451 4.7.1 Attachment held for an outbreak check, try again later"
)

// ClassOutbreak is the class of the worm copies the outbreak filter
// holds. Which copies pass depends on the order concurrent sessions reach
// the daemon, so they carry no expectation of their own: of all of them,
// exactly MixMinNetworks pass (the copy from the MixMinNetworks-th network
// crosses the line and passes) and every later one is held. MixCheck
// checks that.
const ClassOutbreak = "outbreak worm"

// MixMinNetworks is the outbreak filter's min_networks in MixConfig.
const MixMinNetworks = 10

// MixSignature is the line the virus filter's signature file has.
const MixSignature = "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

// MixListed are the DNS blocklist's records (relative to zone bl.test):
// clients 192.0.2.1 to 192.0.2.20 are listed.
func MixListed() map[string]string {
	records := map[string]string{}
	for i := 1; i <= 20; i++ {
		records[fmt.Sprintf("%d.2.0.192", i)] = "127.0.0.2"
	}
	return records
}

// MixZone is the DNS blocklist zone MixListed answers for.
const MixZone = "bl.test"

// MixServers are the servers the mix's configuration names.
type MixServers struct {
	Clamd     string // the clamav filter's address, "unix:/PATH"
	ClamdName string // what clamd reports for the EICAR file
	DNS       string // the DNS server answering MixZone, "HOST:PORT"
}

// Mix is the soak traffic. Sessions are made from a fixed pool of message
// bodies with envelopes, clients and sizes that vary with the session's
// number, so a plan of any length costs no memory beyond the pool.
type Mix struct {
	// Clients is how many addresses the ordinary sessions come from, in
	// turn (NewMix: MixClients); at most 1<<24, from 10.0.0.0 up.
	Clients int

	dir      string
	servers  MixServers
	clean    []Message
	infected []Message
	eicar    []Message
	exe      []Message
	fromJunk []Message
	worm     Message
}

// NewMix writes the daemon's data for the mix into dir and makes the
// message pool.
func NewMix(dir string, servers MixServers) (*Mix, error) {
	m := &Mix{Clients: MixClients, dir: dir, servers: servers}
	if err := m.writeFiles(); err != nil {
		return nil, err
	}
	r := rand.New(rand.NewPCG(23, 1))
	for i := 0; i < 64; i++ {
		size := 800 + r.IntN(3000)
		if i%16 == 15 {
			size = 20000 + r.IntN(60000) // a few larger ones: bodies in several chunks
		}
		m.clean = append(m.clean, mixMessage(r, i, size, "report.txt", nil, ""))
		m.infected = append(m.infected, mixMessage(r, i, size, "report.txt", nil, MixSignature))
		m.fromJunk = append(m.fromJunk, mixMessage(r, i, size, "report.txt", nil, ""))
		m.fromJunk[i].Fields[0].Value = fmt.Sprintf("Offers <deals%d@junk.example>", i)
	}
	for i := 0; i < 8; i++ {
		m.eicar = append(m.eicar, mixMessage(r, i, 1000, "test.txt", []byte(eicar), ""))
		m.exe = append(m.exe, mixMessage(r, i, 2000, "setup.exe", []byte("MZ\x90\x00program"), ""))
	}
	// A program attachment (found by its content) of a kind the
	// attachments filter lets through: the outbreak filter's business.
	wormBytes := []byte("MZ\x90\x00\x03\x00\x00\x00\x04\x00")
	for len(wormBytes) < 6000 {
		wormBytes = append(wormBytes, byte(r.Uint32()))
	}
	m.worm = mixMessage(r, 0, 8000, "movie.pif", wormBytes, "")
	return m, nil
}

// eicar is the anti-virus test file.
const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// mixMessage is a message with a short text and one base64 attachment of
// about size bytes (content, if given, else random text), with line
// planted in the middle of its base64 lines.
func mixMessage(r *rand.Rand, i, size int, name string, content []byte, line string) Message {
	if content == nil {
		const letters = "abcdefghijklmnopqrstuvwxyz      \n"
		content = make([]byte, max(0, size-600)*3/4)
		for j := range content {
			content[j] = letters[r.IntN(len(letters))]
		}
	}
	boundary := fmt.Sprintf("=_mix_%d_%08x", i, r.Uint32())
	fields := []message.Field{
		{Name: "From", Value: fmt.Sprintf("Sender %d <sender%d@example.org>", i, i)},
		{Name: "To", Value: "user@example.edu"},
		{Name: "Subject", Value: fmt.Sprintf("report %d", r.Uint32())},
		{Name: "Date", Value: "Mon, 2 Mar 2026 10:00:00 +0000"},
		{Name: "Message-ID", Value: fmt.Sprintf("<%d.%d@example.org>", i, r.Uint64())},
		{Name: "MIME-Version", Value: "1.0"},
		{Name: "Content-Type", Value: fmt.Sprintf("multipart/mixed; boundary=\"%s\"", boundary)},
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nPlease find the file attached.\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: application/octet-stream; name=\"%s\"\r\n", boundary, name)
	fmt.Fprintf(&b, "Content-Disposition: attachment; filename=\"%s\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", name)
	enc := base64.StdEncoding.EncodeToString(content)
	plantAt := len(enc) / 2 / 76
	for n := 0; len(enc) > 0; n++ {
		if line != "" && n == plantAt {
			b.WriteString(line + "\r\n")
		}
		k := min(76, len(enc))
		b.WriteString(enc[:k] + "\r\n")
		enc = enc[k:]
	}
	fmt.Fprintf(&b, "--%s--\r\n", boundary)
	return Message{Name: name, Fields: fields, Body: b.Bytes()}
}

// Users of the mix: 100 ordinary mailboxes, one over quota, one over
// quota that forwards its mail, one that blocks senders, one whose mail
// is captured.
const (
	mixUsers   = 100
	mixFull    = "full@example.edu"
	mixForward = "away@example.edu"
	mixBlocker = "picky@example.edu"
	mixCapture = "legal@example.edu"
)

func (m *Mix) writeFiles() error {
	var users strings.Builder
	mailbox := func(addr, quotaLine, usage, flags string) error {
		md := filepath.Join(m.dir, "mail", strings.TrimSuffix(addr, "@example.edu"))
		for _, sub := range []string{"cur", "new", "tmp"} {
			if err := os.MkdirAll(filepath.Join(md, sub), 0o755); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(md, "maildirsize"), []byte(quotaLine+"\n"+usage+"\n"), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(&users, "%s %s%s\n", addr, md, flags)
		return nil
	}
	for i := 0; i < mixUsers; i++ {
		if err := mailbox(fmt.Sprintf("user%d@example.edu", i), "104857600S,100000C", "2000 2", ""); err != nil {
			return err
		}
	}
	for _, u := range []struct{ addr, usage, flags string }{
		{mixFull, "1048000 900", ""},
		{mixForward, "1048000 900", " forward"},
		{mixBlocker, "2000 2", ""},
		{mixCapture, "2000 2", ""},
	} {
		if err := mailbox(u.addr, "1048576S,1000C", u.usage, u.flags); err != nil {
			return err
		}
	}
	files := map[string]string{
		"users":      users.String(),
		"signatures": "SOAK_WORM =\n" + MixSignature + "\n",
		"blocklist":  mixBlocker + " spammer@bad.example\n" + mixBlocker + " @junk.example\n",
		"capture.on": "",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(m.dir, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	return os.MkdirAll(filepath.Join(m.dir, "capture"), 0o700)
}

// Config is the daemon's configuration for the mix (without listen):
// every filter on, in the order a site would put them (the cheap ones
// first), and the status page and metrics on httpListen.
func (m *Mix) Config(httpListen string) string {
	p := func(name string) string { return strconv.Quote(filepath.Join(m.dir, name)) }
	return fmt.Sprintf(`filters = ["access", "ratelimit", "senders", "quota", "virus", "attachments", "outbreak", "clamav", "capture"]
max_connections = 2000

[http]
listen = %q

[access]
deny = ["203.0.113.0/24"]
dnsbl = [%q]
dns_server = %q

[ratelimit]
# Clients the access filter refuses come back often and at once.
exempt = ["192.0.2.0/24", "203.0.113.0/24"]
[[ratelimit.rule]]
name = "one-at-a-time"
event = "concurrency"
key = "client"
limit = 1
[[ratelimit.rule]]
name = "messages-per-network"
event = "message"
key = "network"
limit = 1000000
window = "1m"
[[ratelimit.rule]]
name = "recipients-per-recipient"
event = "recipient"
key = "recipient"
limit = 10000000
window = "1m"
[[ratelimit.rule]]
name = "bytes-per-client"
event = "byte"
key = "client"
limit = 1000000000
window = "1m"

[senders]
blocklist = %s

[quota]
users = %s

[virus]
signatures = %s

[attachments]
block_names = ["*.exe", "*.scr"]
block_double_extensions = true
block_disguised_executables = true

[outbreak]
min_networks = %d
samples = %s
max_samples = 20

[clamav]
address = %q
clamd_config = ""

[capture]
switch = %s
dir = %s
recipients = [%q]
`, httpListen, MixZone, m.servers.DNS, p("blocklist"), p("users"), p("signatures"),
		MixMinNetworks, p("samples"), m.servers.Clamd, p("capture.on"), p("capture"), mixCapture)
}

// MixClients is how many client addresses the ordinary sessions come
// from, in turn: a site's regular correspondents. Caches and counts kept
// per client (DNS blocklist answers, rate limit windows) hold as many,
// and fill within the first MixClients sessions.
const MixClients = 20000

// Session is session i of the mix. About one session in a hundred is a
// worm copy from a network of its own, two in a hundred come from a
// client on the DNS blocklist or the deny list, two open a second
// connection from their client while they are open (refused by the
// concurrency limit). No two sessions at once come from one client (a
// client comes back Clients sessions later), so none meets the
// concurrency limit, but for the refused clients, which the rate limits
// exempt. The others carry 1 to 6 messages of every kind.
func (m *Mix) Session(i int) Session {
	r := rand.New(rand.NewPCG(uint64(i), 77))
	c := i % min(max(1, m.Clients), 1<<24)
	s := Session{Client: fmt.Sprintf("10.%d.%d.%d", c>>16&255, c>>8&255, c&255)}
	refusal, refusedClass := "", ""
	switch k := r.IntN(100); {
	case k == 0:
		w := m.worm
		w.Name, w.Class, w.Sender, w.Rcpts = fmt.Sprintf("session %d worm", i), ClassOutbreak, fmt.Sprintf("w%d@worm.example", i), []string{fmt.Sprintf("user%d@example.edu", r.IntN(mixUsers))}
		// A network of its own (the /24 repeats every 4,096 sessions),
		// a client of its own.
		s.Client = fmt.Sprintf("172.%d.%d.%d", 16+i>>8&15, i&255, 1+i>>12&127)
		s.Messages = []Message{w}
		return s
	case k == 1:
		s.Client = fmt.Sprintf("192.0.2.%d", 1+r.IntN(20))
		refusal, refusedClass = fmt.Sprintf(ReplyListed, s.Client, MixZone), "refused client: on the DNS blocklist"
	case k == 2:
		s.Client, refusal, refusedClass = fmt.Sprintf("203.0.113.%d", r.IntN(256)), ReplyAccess, "refused client: on the deny list"
	case k <= 4:
		s.Parallel = ReplyRateLimit
	}
	n := 1 + r.IntN(6)
	for j := 0; j < n; j++ {
		msg := m.message(r, i, j)
		if refusal != "" {
			msg.Expect, msg.Class = refusal, refusedClass
		}
		s.Messages = append(s.Messages, msg)
		if msg.Stop == Hangup {
			break
		}
	}
	return s
}

// message is one message of the mix, with its class and expected verdict.
func (m *Mix) message(r *rand.Rand, i, j int) Message {
	pick := func(pool []Message) Message { return pool[r.IntN(len(pool))] }
	user := fmt.Sprintf("user%d@example.edu", r.IntN(mixUsers))
	msg := pick(m.clean)
	msg.Sender, msg.Rcpts, msg.Expect = fmt.Sprintf("sender%d@example.org", r.IntN(5000)), []string{user}, "accept"
	switch k := r.IntN(100); {
	case k < 55:
		msg.Class = "clean"
		if k < 10 {
			msg.Class, msg.Rcpts = "clean, 3 recipients", []string{user, fmt.Sprintf("user%d@example.edu", r.IntN(mixUsers)), mixBlocker}
		}
	case k < 61:
		msg = withEnvelope(pick(m.infected), msg)
		msg.Class, msg.Expect = "virus signature", ReplyVirus
	case k < 65:
		msg = withEnvelope(pick(m.eicar), msg)
		msg.Class, msg.Expect = "EICAR (clamd)", ReplyClamd+m.servers.ClamdName
	case k < 69:
		msg = withEnvelope(pick(m.exe), msg)
		msg.Class, msg.Expect = "attachment setup.exe", ReplyAttachment
	case k < 74:
		msg.Class, msg.Rcpts, msg.Expect = "over quota", []string{mixFull}, ReplyMailboxFull
	case k < 76:
		msg.Class, msg.Rcpts, msg.Expect = "over quota and another recipient", []string{mixFull, user}, "rcpt "+ReplyMailboxFull+"; accept"
	case k < 77:
		msg.Class, msg.Rcpts, msg.Sender = "over quota, from postmaster", []string{mixFull}, "postmaster@example.org"
	case k < 78:
		msg.Class, msg.Rcpts = "over quota, forwarding", []string{mixForward}
	case k < 81:
		msg.Class, msg.Rcpts, msg.Sender, msg.Expect = "blocked sender", []string{mixBlocker}, "spammer@bad.example", ReplySender
	case k < 83:
		msg = withEnvelope(pick(m.fromJunk), msg)
		msg.Class, msg.Rcpts, msg.Expect = "blocked From:", []string{mixBlocker}, ReplySender
	case k < 85:
		msg.Class, msg.Rcpts = "captured", []string{mixCapture}
	case k < 95:
		msg.Class, msg.Stop, msg.Expect = "aborted mid-message", Abort, VerdictAborted
	default:
		msg.Class, msg.Stop, msg.Expect = "connection lost mid-message", Hangup, VerdictHungUp
	}
	msg.Name = fmt.Sprintf("session %d message %d", i, j)
	return msg
}

// withEnvelope is body with envelope's sender, recipients and expectation.
func withEnvelope(body, envelope Message) Message {
	body.Sender, body.Rcpts, body.Expect = envelope.Sender, envelope.Rcpts, envelope.Expect
	return body
}

// MixCheck checks what the plan cannot say message by message: of the
// worm copies, exactly MixMinNetworks passed and every later one was
// held. It returns what is wrong, or "".
func MixCheck(res *Result) string {
	passed, held, other := 0, 0, 0
	for o, n := range res.Table {
		if o.Class != ClassOutbreak {
			continue
		}
		switch o.Got {
		case "accept":
			passed += n
		case ReplyHeld:
			held += n
		default:
			other += n
		}
	}
	if passed+held+other == 0 {
		return ""
	}
	if passed != min(MixMinNetworks, passed+held+other) || other != 0 {
		return fmt.Sprintf("worm copies: %d passed, %d held, %d other; want %d passed, the rest held", passed, held, other, MixMinNetworks)
	}
	return ""
}
