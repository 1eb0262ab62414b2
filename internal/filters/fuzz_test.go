package filters_test

import (
	"regexp"
	"strings"
	"testing"

	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all"
)

// uncommented is the complete example configuration with every key
// written out (the example gives most as "# key = default").
func uncommented() string {
	keys := regexp.MustCompile(`(?m)^# ?([a-z_]+ = (["[{0-9]|true|false)|\[\[[a-z.]+\]\]$)`)
	return keys.ReplaceAllString(filters.ExampleConfig(), "$1")
}

// FuzzConfig reads whatever a configuration file holds with every
// filter's section (their rules, lists of addresses, DNS blocklists,
// clamd addresses, sizes, durations): no panic; a problem names the file;
// and reading the same text again gives the same problems in the same
// order, so `mailguard check-config` is repeatable.
func FuzzConfig(f *testing.F) {
	f.Add(filters.ExampleConfig())
	f.Add(uncommented())
	f.Add("filters = [\"access\", \"ratelimit\"]\n[access]\ndeny = [\"192.0.2.0/24\", \"helo:*.example\"]\ndnsbl = [\"zen.example.org=127.0.0.[2..11]*2\"]\n" +
		"[ratelimit]\n[[ratelimit.rule]]\nevent = \"message\"\nkey = \"client\"\nlimit = 10\nwindow = \"1m\"\naction = \"tarpit:5s,reject\"\n")
	f.Add("filters = [\"clamav\", \"quota\"]\n[clamav]\naddress = \"unix:/run/clamd.sock tcp:[::1]:3310\"\nmax_size = \"25M\"\n[quota]\nusers = \"/etc/mailguard/users\"\n")
	f.Add("[ratelimit]\n[[ratelimit.rule]]\nevent = \"concurrency\"\nkey = \"sender\"\nlimit = 0\nwindow = \"1s\"\n[[ratelimit.rule]]\n")
	f.Fuzz(func(t *testing.T, in string) {
		c, err := filters.Parse("f.toml", []byte(in))
		if err == nil && c == nil {
			t.Fatal("no configuration and no error")
		}
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "f.toml") {
					t.Fatalf("a problem that does not name the file: %q", line)
				}
			}
		}
		_, again := filters.Parse("f.toml", []byte(in))
		if (err == nil) != (again == nil) || err != nil && err.Error() != again.Error() {
			t.Fatalf("read twice: %v\nthen: %v", err, again)
		}
	})
}
