package attachments

import (
	"bytes"
	"context"
	"testing"

	"mailguard/internal/pipeline"
)

// SmallMessage is smallMessage, for the package's outside tests.
const SmallMessage = smallMessage

// A small message is kept and walked at its end on the session's own
// goroutine; only a larger one gets a walk goroutine and a pipe.
func TestOnlyLargeMessagesStream(t *testing.T) {
	f := New(Options{})
	for _, size := range []int{100, smallMessage - 1000, smallMessage + 1} {
		ck, err := f.NewCheck(context.Background(), &pipeline.Envelope{})
		if err != nil {
			t.Fatal(err)
		}
		c := ck.(*check)
		c.Header(context.Background(), "Subject", "x")
		c.EndOfHeaders(context.Background(), &pipeline.Envelope{})
		c.Body(context.Background(), bytes.Repeat([]byte("a"), size))
		if streams := c.done != nil; streams != (size > smallMessage) {
			t.Errorf("a %d-byte body: streamed %v", size, streams)
		}
		if v, err := c.EndOfMessage(context.Background(), &pipeline.Envelope{}); v.Final() || err != nil {
			t.Errorf("a %d-byte body: %v, %v", size, v, err)
		}
		c.Close()
	}
}

// A header past the walk's limits is refused at its end, before the body
// (capture then has no body to copy), as when every message streamed.
func TestHeaderBombRefusedAtItsEnd(t *testing.T) {
	f := New(Options{OnLimit: PolicyReject})
	ck, err := f.NewCheck(context.Background(), &pipeline.Envelope{})
	if err != nil {
		t.Fatal(err)
	}
	c := ck.(*check)
	defer c.Close()
	for range 12000 {
		c.Header(context.Background(), "X", "y")
	}
	v, err := c.EndOfHeaders(context.Background(), &pipeline.Envelope{})
	if err != nil || !v.Final() {
		t.Fatalf("a header of 12,000 fields at its end: %v, %v; want a refusal", v, err)
	}
}
