package config_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"mailguard/etc"
	"mailguard/internal/config"
	"mailguard/internal/filter/capture"
	"mailguard/internal/filter/quota"
	"mailguard/internal/filter/virus"
	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all"
)

// Parse reads config text with every filter's section, as the daemon does.
func Parse(file string, data []byte) (*config.Config, error) { return filters.Parse(file, data) }

// The complete example (the global keys and every filter's section)
// documents every key with its default: parsed, it must equal the
// built-in defaults, so docs and code cannot drift apart.
func TestExampleConfigIsTheDefaults(t *testing.T) {
	for name, text := range map[string]string{"etc/mailguard.toml": string(etc.ExampleConfig), "example-config": filters.ExampleConfig()} {
		c, err := Parse(name, []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		want := filters.Default()
		c.File = ""
		if !reflect.DeepEqual(c.Sections, want.Sections) || c.Listen != want.Listen || c.Log != want.Log ||
			c.SocketMode != want.SocketMode || c.DrainTimeout != want.DrainTimeout || c.IdleTimeout != want.IdleTimeout ||
			!reflect.DeepEqual(c.Filters, want.Filters) {
			t.Errorf("%s differs from the defaults:\n got %+v\nwant %+v", name, c, want)
		}
	}
	for _, name := range filters.Names() {
		if !strings.Contains(filters.ExampleConfig(), "\n["+name+"]\n") {
			t.Errorf("example-config lacks [%s]", name)
		}
	}
}

func virusOf(c *config.Config) *virus.Config     { return c.Sections["virus"].(*virus.Config) }
func captureOf(c *config.Config) *capture.Config { return c.Sections["capture"].(*capture.Config) }

func TestParseValues(t *testing.T) {
	c, err := Parse("/etc/mailguard/mailguard.toml", []byte(`
listen = "unix:/run/mailguard/milter.sock"
socket_mode = "0600"
filters = ["virus"]
drain_timeout = "5s"
[log]
target = "syslog"
level = "debug"
summary_interval = "1m"
[virus]
signatures = "signatures"
reply = "Worm refused"
include_name = true
on_error = "accept"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen.Network != "unix" || c.Listen.Address != "/run/mailguard/milter.sock" || c.SocketMode != 0o600 {
		t.Errorf("listen %+v mode %o", c.Listen, c.SocketMode)
	}
	if virusOf(c).Signatures != "/etc/mailguard/signatures" {
		t.Errorf("relative signature path not resolved against the config's directory: %q", virusOf(c).Signatures)
	}
	if c.Log.Target != "syslog" || c.Log.SummaryInterval.Minutes() != 1 || !virusOf(c).IncludeName || virusOf(c).OnError != "accept" || virusOf(c).Reply != "Worm refused" {
		t.Errorf("values not taken: %+v", c)
	}
	if c.Line("virus.reply") != 12 || c.Line("log.level") != 8 {
		t.Errorf("lines: virus.reply %d, log.level %d", c.Line("virus.reply"), c.Line("log.level"))
	}
}

func TestEveryProblemWithItsLine(t *testing.T) {
	_, err := Parse("m.toml", []byte(`listen = "tcp:1.2.3.4:25"
socket_mode = "rw"
filters = ["virus", "nope"]
idle_timeout = "-5s"
[log]
level = "loud"
[virus]
reply = "bad\u0001text"
colour = "red"
`))
	if err == nil {
		t.Fatal("no error")
	}
	want := []string{
		`m.toml:1: listen: "tcp:1.2.3.4:25": unknown socket type`,
		`m.toml:2: socket_mode: "rw" is not an octal file mode`,
		`m.toml:3: filters: unknown filter "nope"`,
		`m.toml:4: idle_timeout: "-5s" is not a positive duration`,
		`m.toml:6: log.level: "loud": want one of`,
		`m.toml:8: virus.reply: reply text must be printable ASCII`,
		`m.toml:9: unknown key "virus.colour"`,
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("missing %q in:\n%v", w, err)
		}
	}
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Error("errors are not *config.Error")
	}
}

func TestSyntaxAndTypeErrorsHaveLines(t *testing.T) {
	cases := map[string]string{
		"listen = \n":               "m.toml:1:",
		"[virus]\ninclude_name = 3": "m.toml:2:",
		"a = [\n":                   "m.toml:1:",
	}
	for in, want := range cases {
		_, err := Parse("m.toml", []byte(in))
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q: err = %v, want prefix %q", in, err, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(string(etc.ExampleConfig))
	f.Add("listen = \"inet:127.0.0.1:1\"\n[virus]\nsignatures=\"x\"\n")
	f.Add("[[a]]\nb = {c = [1, 2]}\n")
	f.Fuzz(func(t *testing.T, in string) {
		c, err := Parse("f.toml", []byte(in))
		if err == nil && c == nil {
			t.Fatal("nil config without error")
		}
		if err != nil && !strings.HasPrefix(err.Error(), "f.toml") {
			t.Fatalf("error does not name the file: %v", err)
		}
	})
}

func TestFilterSections(t *testing.T) {
	_, err := Parse("m.toml", []byte(`filters = ["capture", "senders", "quota"]
[capture]
recipients = ["nobody", "@example.edu"]
max_size = "huge"
[senders]
recipient_delimiter = "++"
`))
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{
		`m.toml:3: capture.recipients: pattern "nobody": want an address, "@domain"`,
		`m.toml:4: capture.max_size:`,
		`m.toml:6: senders.recipient_delimiter:`,
		`m.toml:1: filters: the capture filter needs [capture] switch`,
		`m.toml:1: filters: the senders filter needs [senders] blocklist`,
		`m.toml:1: filters: the quota filter needs [quota] users`,
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("missing %q in:\n%v", w, err)
		}
	}
	c, err := Parse("/etc/mailguard/m.toml", []byte(`filters = ["capture"]
[capture]
switch = "capture.on"
dir = "/var/spool/mailguard/capture"
senders = ["@suspect.example"]
include_rejected = true
`))
	if err != nil {
		t.Fatal(err)
	}
	if cc := captureOf(c); cc.Switch != "/etc/mailguard/capture.on" || !cc.IncludeRejected || cc.MaxSize.Bytes != 100<<20 || cc.Senders[0] != "@suspect.example" {
		t.Errorf("capture %+v", cc)
	}
}

// A filter's section keys reach the filter: quota's recount window.
func TestQuotaRecountInterval(t *testing.T) {
	c, err := Parse("m.toml", []byte("[quota]\nrecount_interval = \"5m\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Sections["quota"].(*quota.Config).RecountInterval.Duration; got.Minutes() != 5 {
		t.Fatalf("recount_interval %v", got)
	}
}

func TestSocketOwnerAndGroup(t *testing.T) {
	c, err := Parse("m.toml", []byte("socket_owner = \"root\"\nsocket_group = \"0\"\n"))
	if err != nil || c.SocketOwner != 0 || c.SocketGroup != 0 {
		t.Fatalf("%+v %v", c, err)
	}
	_, err = Parse("m.toml", []byte("socket_group = \"no-such-group-here\"\n"))
	if err == nil || !strings.Contains(err.Error(), `m.toml:1: socket_group: no group "no-such-group-here" on this system`) {
		t.Fatalf("err = %v", err)
	}
}
