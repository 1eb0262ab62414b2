package message

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func readAll(t *testing.T, in string) ([]Field, string) {
	t.Helper()
	r := NewReader(strings.NewReader(in))
	fields, err := r.Header()
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	for {
		c, err := r.BodyChunk()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(c) > 2*ChunkSize {
			t.Fatalf("chunk of %d bytes", len(c))
		}
		body.Write(c)
	}
	return fields, body.String()
}

func TestHeaderAndBody(t *testing.T) {
	fields, body := readAll(t, "From someone Mon Jan  1 00:00:00 2024\nSubject: hi\n\tthere\nFrom: A <a@x>\n\nline1\nline2\r\n")
	if len(fields) != 2 || fields[0].Name != "Subject" || fields[0].Value != "hi\r\n\tthere" || fields[1].Value != "A <a@x>" {
		t.Fatalf("fields = %q", fields)
	}
	if body != "line1\r\nline2\r\n" {
		t.Fatalf("body = %q", body)
	}
}

func TestNoHeaderIsAllBody(t *testing.T) {
	fields, body := readAll(t, "this is not a header\nsecond\n")
	if len(fields) != 0 || body != "this is not a header\r\nsecond\r\n" {
		t.Fatalf("fields %q body %q", fields, body)
	}
}

func TestHugeLineStaysBody(t *testing.T) {
	huge := strings.Repeat("A", 300000)
	_, body := readAll(t, "Subject: x\n\n"+huge+"\n")
	if body != huge+"\r\n" {
		t.Fatalf("body length %d, want %d", len(body), len(huge)+2)
	}
	_, body = readAll(t, huge)
	if body != huge {
		t.Fatalf("header-less huge line: body length %d", len(body))
	}
}

func TestAppendCRLF(t *testing.T) {
	cases := []struct {
		in     []string
		want   string
		prevCR bool
	}{
		{[]string{"a\nb\r\nc"}, "a\r\nb\r\nc", false},
		{[]string{"a\r", "\nb"}, "a\r\nb", false},
		{[]string{"a", "\n"}, "a\r\n", false},
		{[]string{"\n\n"}, "\r\n\r\n", false},
		{[]string{"\x00\n"}, "\x00\r\n", false},
	}
	for _, c := range cases {
		var out []byte
		cr := false
		for _, part := range c.in {
			out, cr = AppendCRLF(out, []byte(part), cr)
		}
		if string(out) != c.want {
			t.Errorf("%q -> %q, want %q", c.in, out, c.want)
		}
	}
}

// FuzzReader: no panic, no loss: every byte of the input after the header
// comes out of the body, with only CRs added.
func FuzzReader(f *testing.F) {
	f.Add("Subject: a\n\nbody\n")
	f.Add("From x\nA: b\n c\n\n\r\n\x00")
	f.Add("no header\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		r := NewReader(strings.NewReader(in))
		fields, err := r.Header()
		if err != nil {
			t.Fatal(err)
		}
		var body []byte
		for {
			c, err := r.BodyChunk()
			if err != nil {
				break
			}
			body = append(body, c...)
		}
		stripped := strings.ReplaceAll(string(body), "\r\n", "\n")
		orig := strings.ReplaceAll(in, "\r\n", "\n")
		if !strings.HasSuffix(orig, stripped) {
			t.Fatalf("body %q is not the end of the input %q", body, in)
		}
		for _, fl := range fields {
			if fl.Name == "" || strings.ContainsAny(fl.Name, ": \t\r\n") {
				t.Fatalf("bad field name %q", fl.Name)
			}
		}
	})
}
