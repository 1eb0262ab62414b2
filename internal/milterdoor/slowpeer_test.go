package milterdoor_test

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"mailguard/internal/milterdoor"
	"mailguard/internal/pipeline"
	"mailguard/internal/verdict"
)

// A connection that keeps sending packets is not idle, however short the
// idle timeout: the deadline is refreshed before it can run out.
func TestShortIdleTimeoutKeepsActiveConnection(t *testing.T) {
	td := startDoorWith(t, milterdoor.Options{IdleTimeout: 400 * time.Millisecond}, pipeline.Member{Filter: &apiFilter{}})
	r := dialRaw(t, td.addr)
	r.read()
	r.send('C', "mx.example.org\x004\x00\x19192.0.2.1\x00")
	if code, _ := r.read(); code != 'c' {
		t.Fatalf("connect: %q", code)
	}
	for i := 0; i < 15; i++ { // 1.5 s of macro packets, one every 100 ms
		time.Sleep(100 * time.Millisecond)
		r.send('D', "M", "{mail_addr}\x00a@example.org\x00")
	}
	r.send('M', "<a@example.org>\x00")
	if code, _ := r.read(); code != 'c' {
		t.Fatalf("MAIL after 1.5 s of packets: %q", code)
	}
}

// A peer that trickles a packet a byte at a time is closed at the idle
// timeout counted from the packet's start: its bytes do not keep it open.
func TestTrickledPacketTimesOut(t *testing.T) {
	td := startDoorWith(t, milterdoor.Options{IdleTimeout: 500 * time.Millisecond}, pipeline.Member{Filter: &apiFilter{}})
	r := dialRaw(t, td.addr)
	r.read()
	pkt := append(binary.BigEndian.AppendUint32(nil, 1000), 'M')
	pkt = append(pkt, "<slow@example.org>"...)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := 0; ; i++ { // a byte every 100 ms, for as long as the door listens
			b := byte('x')
			if i < len(pkt) {
				b = pkt[i]
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := r.c.Write([]byte{b}); err != nil {
				return
			}
		}
	}()
	if !closedWithin(r.c, 5*time.Second) {
		t.Fatal("a trickling peer outlived the idle timeout")
	}
}

// A filter that works longer than the idle timeout, while the MTA waits
// for the answer, is not cut short: the connection is busy, not idle,
// and the watch beside the stage must not take the idle deadline for
// the MTA hanging up.
func TestLongStageOutlastsIdleTimeout(t *testing.T) {
	f := &apiFilter{eom: func(ctx context.Context, _ *pipeline.Envelope) (verdict.Verdict, error) {
		select {
		case <-time.After(1500 * time.Millisecond):
			return verdict.Pass, nil
		case <-ctx.Done():
			return verdict.Pass, ctx.Err()
		}
	}}
	td := startDoorWith(t, milterdoor.Options{IdleTimeout: 500 * time.Millisecond, WatchDelay: 100 * time.Millisecond},
		pipeline.Member{Filter: f, OnError: pipeline.OnErrorTempFail, Timeout: 10 * time.Second})
	s := newSession(t, td)
	connect(t, s)
	assertAccept(t, sendMessage(t, s, []byte("hello\r\n"), 100))
	if logs := td.log(); strings.Contains(logs, "filter calls cancelled") {
		t.Errorf("a busy stage was taken for the MTA giving up:\n%s", logs)
	}
}
