package clamav_test

import (
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"testing"

	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all"
	"mailguard/internal/filters/filterstest"
	"mailguard/internal/logging"
	"mailguard/internal/pipeline"
	"mailguard/internal/scan"
	"mailguard/internal/stats"
	"mailguard/internal/testserver"
	"mailguard/internal/verdict"
)

func build(t *testing.T, toml string) (*pipeline.Pipeline, *stats.Counter) {
	return filterstest.Build(t, "", toml, pipeline.Env{})
}

func run(t *testing.T, p *pipeline.Pipeline, msg string) scan.Outcome {
	return filterstest.Scan(t, p, msg)
}

// attachment is a multipart message with data as a base64 attachment, so
// clamd finds data only if it sees the top-level Content-Type.
func attachment(data string) string {
	b64 := base64.StdEncoding.EncodeToString([]byte(data))
	return "From: a@example.org\r\nTo: b@example.com\r\nSubject: report\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"XyZ\"\r\n\r\n" +
		"--XyZ\r\nContent-Type: text/plain\r\n\r\nsee the attachment\r\n" +
		"--XyZ\r\nContent-Type: application/octet-stream; name=\"file.com\"\r\nContent-Transfer-Encoding: base64\r\n" +
		"Content-Disposition: attachment; filename=\"file.com\"\r\n\r\n" + b64 + "\r\n--XyZ--\r\n"
}

const clean = "From: a@example.org\r\nTo: b@example.com\r\nSubject: hello\r\n\r\nNothing to see here.\r\n"

func config(c *testserver.Clamd, extra string) string {
	return fmt.Sprintf("filters = [\"clamav\"]\n[clamav]\naddress = %q\nclamd_config = %q\n%s", c.Address(), c.Conf, extra)
}

func TestRealClamd(t *testing.T) {
	c := testserver.StartClamd(t, testserver.ClamdOptions{StreamMaxLength: "1M"})
	p, counter := build(t, config(c, "max_size = \"512K\"\nadd_headers = \"replace\""))

	t.Run("clean", func(t *testing.T) {
		out := run(t, p, "X-Virus-Status: Clean (forged)\r\n"+clean)
		if out.Verdict.Final() {
			t.Fatalf("clean message refused: %v", out.Verdict)
		}
		var got []string
		for _, h := range out.Headers {
			got = append(got, fmt.Sprintf("%d %s %d %q", h.Op, h.Name, h.Index, h.Value))
		}
		want := []string{`2 X-Virus-Status 1 ""`, `0 X-Virus-Scanned 0 "ClamAV using mailguard"`, `0 X-Virus-Status 0 "Clean"`}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("headers:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
	t.Run("EICAR as a base64 attachment", func(t *testing.T) {
		out := run(t, p, attachment(testserver.EICAR))
		code, enh, text := out.Verdict.Reply()
		if out.Verdict.Action != verdict.Reject || code != 550 || enh != "5.7.0" || text != "VIRUS FOUND: "+testserver.EICARName {
			t.Fatalf("got %v", out.Verdict)
		}
	})
	t.Run("test string in the body", func(t *testing.T) {
		out := run(t, p, clean+"x "+testserver.TestString+" y\r\n")
		if out.Verdict.Reason != testserver.TestStringName {
			t.Fatalf("got %v (%s)", out.Verdict, out.Verdict.Reason)
		}
	})
	t.Run("over max_size: accepted unscanned, said so", func(t *testing.T) {
		big := attachment(testserver.EICAR + strings.Repeat("x", 600<<10))
		out := run(t, p, big)
		if out.Verdict.Final() {
			t.Fatalf("got %v", out.Verdict)
		}
		last := out.Headers[len(out.Headers)-1]
		if last.Value != "Unscanned (too large)" {
			t.Fatalf("status header %q", last.Value)
		}
		if n := counter.Take().Hits["clamav:not scanned: too large"]; n != 1 {
			t.Fatalf("counted %d", n)
		}
	})
	t.Run("over max_size, announced by SIZE=", func(t *testing.T) {
		p, _ := build(t, config(c, "max_size = \"1K\"\non_oversize = \"reject\""))
		cn := p.Open(t.Context(), &pipeline.Conn{})
		defer cn.Close()
		m, _ := cn.Begin(pipeline.AllStages, pipeline.AllModifications, "a@example.org", "SIZE=5000")
		defer m.Close()
		m.Rcpt("b@example.com", "")
		if v := m.End(); v.Code != 552 || v.Enhanced != "5.3.4" {
			t.Fatalf("got %v", v)
		}
	})
	t.Run("over clamd's StreamMaxLength: clamd's early close read as oversize", func(t *testing.T) {
		p, _ := build(t, config(c, "max_size = \"4M\"\non_oversize = \"tempfail\""))
		out := run(t, p, clean+strings.Repeat("y", 2<<20))
		if out.Verdict.Action != verdict.TempFail || out.Verdict.Key != "too large to scan" {
			t.Fatalf("got %v (%s)", out.Verdict, out.Verdict.Key)
		}
	})

	t.Run("monitor mode: delivered, marked", func(t *testing.T) {
		p, _ := build(t, config(c, "mode = \"monitor\"\nadd_headers = \"add\""))
		out := run(t, p, attachment(testserver.EICAR))
		if out.Verdict.Final() || len(out.Monitored) != 1 || out.Monitored[0].Reason != testserver.EICARName {
			t.Fatalf("got %v, monitored %+v", out.Verdict, out.Monitored)
		}
		var got []string
		for _, h := range out.Headers {
			got = append(got, h.Name+": "+h.Value)
		}
		if !strings.Contains(strings.Join(got, "\n"), "X-Virus-Status: Infected ("+testserver.EICARName+")") || !strings.Contains(strings.Join(got, "\n"), "X-Mailguard: monitor; filter=clamav") {
			t.Fatalf("headers:\n%s", strings.Join(got, "\n"))
		}
	})

	t.Run("replace: every forged field goes, however many came", func(t *testing.T) {
		forged := strings.Repeat("X-Virus-Status: Clean\r\n", 70) + "X-Virus-Scanned: by the sender\r\nx-virus-report: none\r\n"
		p, counter := build(t, config(c, "add_headers = \"replace\"\nmode = \"monitor\"\nmax_size = \"64K\"\non_oversize = \"reject\""))
		for _, tc := range []struct{ name, msg, status string }{
			{"clean", forged + clean, "Clean"},
			{"infected, monitored", forged + attachment(testserver.EICAR), "Infected (" + testserver.EICARName + ")"},
			{"too large, monitored", forged + clean + strings.Repeat("x", 100<<10), "Unscanned (too large)"},
		} {
			out := run(t, p, tc.msg)
			if out.Verdict.Final() {
				t.Fatalf("%s: refused in monitor mode: %v", tc.name, out.Verdict)
			}
			got := strings.Join(virusFields(tc.msg, out.Headers), "\n")
			if want := "X-Virus-Scanned: ClamAV using mailguard\nX-Virus-Status: " + tc.status; got != want {
				t.Errorf("%s: delivered with\n%s\nwant\n%s", tc.name, got, want)
			}
		}
		if n := counter.Take().Hits["clamav:header change dropped"]; n != 0 {
			t.Errorf("%d changes dropped", n)
		}
	})

	// clamd stopped: nothing passes unscanned.
	c.Stop()
	t.Run("clamd stopped, on_error = accept: delivered without a forged status", func(t *testing.T) {
		p, _ := build(t, config(c, "add_headers = \"replace\"\non_error = \"accept\""))
		msg := "X-Virus-Status: Clean\r\n" + clean
		out := run(t, p, msg)
		if out.Verdict.Final() {
			t.Fatalf("got %v", out.Verdict)
		}
		if got := virusFields(msg, out.Headers); len(got) != 0 {
			t.Fatalf("delivered unscanned with %q", got)
		}
	})
	t.Run("clamd stopped: tempfail", func(t *testing.T) {
		out := run(t, p, clean)
		code, enh, _ := out.Verdict.Reply()
		if out.Verdict.Action != verdict.TempFail || code != 451 || enh != "4.3.0" {
			t.Fatalf("got %v", out.Verdict)
		}
	})
	c.Start()
	t.Run("clamd back", func(t *testing.T) {
		// The pool left it out for a while, but it is the only one.
		if out := run(t, p, attachment(testserver.EICAR)); out.Verdict.Reason != testserver.EICARName {
			t.Fatalf("got %v", out.Verdict)
		}
	})
}

// check-config sees clamd's configuration and warns where its limits
// disagree with the filter's.
func TestClamdConfigWarnings(t *testing.T) {
	c := testserver.StartClamd(t, testserver.ClamdOptions{StreamMaxLength: "1M"})
	cfg, err := filters.Parse("test.toml", []byte(config(c, "max_size = \"2M\"")))
	if err != nil {
		t.Fatal(err)
	}
	if err := filters.Check(cfg, pipeline.Env{Log: logging.Discard()}); err != nil {
		t.Fatal(err)
	}
	w := strings.Join(cfg.Warnings, "\n")
	if !strings.Contains(w, "test.toml:5: clamav.max_size: 2M is more than clamd's StreamMaxLength 1M") {
		t.Fatalf("warnings:\n%s", w)
	}
	cfg, _ = filters.Parse("test.toml", []byte(config(c, "max_size = \"1M\"")))
	filters.Check(cfg, pipeline.Env{Log: logging.Discard()})
	if len(cfg.Warnings) != 0 {
		t.Fatalf("limits that agree warned:\n%s", strings.Join(cfg.Warnings, "\n"))
	}
	// Another socket than clamd.conf names, and a clamd not answering.
	cfg, _ = filters.Parse("test.toml", []byte(fmt.Sprintf("filters = [\"clamav\"]\n[clamav]\naddress = \"unix:%s/other.sock\"\nclamd_config = %q\nmax_size = \"1M\"\n", c.Dir, c.Conf)))
	filters.Check(cfg, pipeline.Env{Log: logging.Discard()})
	w = strings.Join(cfg.Warnings, "\n")
	if !strings.Contains(w, "has it listen on unix:"+c.Socket) || !strings.Contains(w, "other.sock") {
		t.Fatalf("warnings:\n%s", w)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkClamavFilter is the filter's own cost per ~100 KB message
// through the pipeline, against a real clamd (clamd's CPU is not counted:
// it runs in its own process).
func BenchmarkClamavFilter(b *testing.B) {
	c := testserver.StartClamd(b, testserver.ClamdOptions{})
	cfg, err := filters.Parse("b.toml", []byte(config(c, "")))
	if err != nil {
		b.Fatal(err)
	}
	p, err := filters.Build(cfg, pipeline.Env{Log: logging.Discard()})
	if err != nil {
		b.Fatal(err)
	}
	msg := attachment(strings.Repeat("harmless data, ", 5000))
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		out, err := scan.Message(p, strings.NewReader(msg))
		if err != nil || out.Verdict.Final() {
			b.Fatal(out.Verdict, err)
		}
	}
}

// virusFields applies header changes to a message's header as the MTA
// does (names matched without regard to case, a deletion of the index-th
// field of a name, additions at the end) and returns the X-Virus-* fields
// the delivered message carries.
func virusFields(msg string, changes []pipeline.HeaderChange) []string {
	head, _, _ := strings.Cut(msg, "\r\n\r\n")
	type field struct{ name, value string }
	var fields []field
	for _, line := range strings.Split(head, "\r\n") {
		name, value, _ := strings.Cut(line, ": ")
		fields = append(fields, field{name, value})
	}
	for _, h := range changes {
		switch h.Op {
		case pipeline.HeaderAdd:
			fields = append(fields, field{h.Name, h.Value})
		case pipeline.HeaderReplace:
			n := 0
			for i := range fields {
				if strings.EqualFold(fields[i].name, h.Name) {
					if n++; n == h.Index {
						if h.Value == "" {
							fields = append(fields[:i], fields[i+1:]...)
						} else {
							fields[i].value = h.Value
						}
						break
					}
				}
			}
		}
	}
	var out []string
	for _, f := range fields {
		if strings.HasPrefix(strings.ToLower(f.name), "x-virus-") {
			out = append(out, f.name+": "+f.value)
		}
	}
	return out
}
