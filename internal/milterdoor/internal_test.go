package milterdoor

import (
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"mailguard/internal/filter/virus"
	"mailguard/internal/pipeline"
	"mailguard/internal/sigfile"
	"mailguard/internal/verdict"
)

func TestReplyMapping(t *testing.T) {
	cases := []struct {
		name string
		v    verdict.Verdict
		code byte
		data string
	}{
		{"continue", verdict.Pass, 'c', ""},
		{"accept", verdict.Verdict{Action: verdict.Accept}, 'a', ""},
		{"discard", verdict.Verdict{Action: verdict.Discard}, 'd', ""},
		{"virus", verdict.Rejectf(550, verdict.EnhSecurity, "VIRUS FOUND"), 'y', "550 5.7.0 VIRUS FOUND\x00"},
		{"mailbox full", verdict.Rejectf(552, verdict.EnhMailboxFull, "Mailbox full"), 'y', "552 5.2.2 Mailbox full\x00"},
		{"tempfail", verdict.TempFailf(451, verdict.EnhSystemTemp, "Try later"), 'y', "451 4.3.0 Try later\x00"},
		{"percent escaped", verdict.Rejectf(550, verdict.EnhSecurity, "100%% bad"), 'y', "550 5.7.0 100%% bad\x00"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, data := reply(c.v)
			if code != c.code || string(data) != c.data {
				t.Errorf("reply = %q %q, want %q %q", code, data, c.code, c.data)
			}
		})
	}
}

type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error)      { return len(p), nil }
func (discardConn) SetWriteDeadline(time.Time) error { return nil }
func (discardConn) SetReadDeadline(time.Time) error  { return nil }
func (discardConn) Close() error                     { return nil }

// FuzzDispatch feeds arbitrary commands to a session: never a panic, and
// per-message state is released at the end.
func FuzzDispatch(f *testing.F) {
	f.Add(byte('C'), []byte("host\x004\x00\x19192.0.2.1\x00"))
	f.Add(byte('M'), []byte("<a@b>\x00SIZE=10\x00"))
	f.Add(byte('R'), []byte("<../../etc/passwd@x>\x00"))
	f.Add(byte('L'), []byte("Subject\x00hi\x00"))
	f.Add(byte('B'), []byte("\x00\x00body"))
	f.Add(byte('E'), []byte("tail"))
	f.Add(byte('D'), []byte("Ei\x00QID\x00j\x00host\x00"))
	f.Add(byte('D'), []byte("E"))
	f.Add(byte('K'), []byte{})
	f.Add(byte('D'), []byte("M"+strings.Repeat("{x}\x00"+strings.Repeat("y", 1000)+"\x00", 40)))
	sigs, _ := sigfile.Parse("f", strings.NewReader("S = uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDya\n"))
	vf, _ := virus.New(sigs, virus.Options{})
	cf := &countingFilter{}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p := pipeline.New(pipeline.Env{Log: log, Now: time.Now}, pipeline.Member{Filter: vf}, pipeline.Member{Filter: cf})
	d := New(p, log, Options{})
	f.Fuzz(func(t *testing.T, cmd byte, data []byte) {
		s := &session{door: d, w: &wireConn{conn: discardConn{}, idle: time.Minute}, pipe: p, delivered: pipeline.AllStages}
		// a connection and a message in progress, the fuzzed command, the
		// end of the message, then of the connection
		s.dispatch('C', []byte("host\x004\x00\x19192.0.2.1\x00"))
		s.dispatch('M', []byte("<a@b>\x00"))
		s.dispatch(cmd, data)
		for slot, raw := range s.macros.raw {
			if len(raw) > maxMacroBytes {
				t.Fatalf("macros of slot %d hold %d bytes", slot, len(raw))
			}
		}
		s.dispatch('E', nil)
		if cf.checks.Load() != 0 {
			t.Fatal("a message's check outlived its end")
		}
		s.endMessage()
		s.closeConnection()
		if n := cf.states.Load(); n != 0 {
			t.Fatalf("%d connection states outlived the connection", n)
		}
	})
}

// TestQueueIDBeforeMail: Sendmail sends the queue id with the MAIL
// macros, before the MAIL command; the message keeps it.
func TestQueueIDBeforeMail(t *testing.T) {
	sigs, _ := sigfile.Parse("f", strings.NewReader("S = uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDya\n"))
	vf, _ := virus.New(sigs, virus.Options{})
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	p := pipeline.New(pipeline.Env{Log: log, Now: time.Now}, pipeline.Member{Filter: vf})
	s := &session{door: New(p, log, Options{}), w: &wireConn{conn: discardConn{}, idle: time.Minute}, pipe: p, delivered: pipeline.AllStages}
	for _, pkt := range []struct {
		cmd  byte
		data string
	}{
		{'D', "Mi\x00QID123\x00"},
		{'M', "<a@b.example>\x00"},
		{'R', "<u@example.edu>\x00"},
		{'B', "uqZpmpiQhHhwL2RpmqZpYFxYVFCmaZqmTEhEQDya"},
		{'E', ""},
	} {
		if _, err := s.dispatch(pkt.cmd, []byte(pkt.data)); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(logs.String(), "mail.queue_id=QID123") {
		t.Fatalf("queue id lost:\n%s", logs.String())
	}
}
