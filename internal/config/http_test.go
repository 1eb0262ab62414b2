package config

import (
	"strings"
	"testing"
)

// http.listen: "" turns it off, loopback needs nothing, anything beyond
// loopback needs basic auth, and user and password_file go together.
func TestHTTPSection(t *testing.T) {
	for _, c := range []struct {
		text, want string // want: a piece of the error, "" for none
	}{
		{"", ""},
		{"[http]\nlisten = \"\"\n", ""},
		{"[http]\nlisten = \"127.0.0.1:9100\"\n", ""},
		{"[http]\nlisten = \"[::1]:9100\"\n", ""},
		{"[http]\nlisten = \"localhost:9100\"\n", ""},
		{"[http]\nlisten = \"0.0.0.0:9100\"\n", "t.toml:2: http.listen: 0.0.0.0:9100 is reachable beyond this host"},
		{"[http]\nlisten = \":9100\"\n", "reachable beyond this host"},
		{"[http]\nlisten = \"192.0.2.1:9100\"\n", "reachable beyond this host"},
		{"[http]\nlisten = \"0.0.0.0:9100\"\nuser = \"pm\"\npassword_file = \"/etc/mailguard/pw\"\n", ""},
		{"[http]\nuser = \"pm\"\n", "http.user and http.password_file go together"},
		{"[http]\nlisten = \"9100\"\n", "want host:port"},
		{"[http]\nlisten = \"mx.example:9100\"\n", "want an IP address and a port"},
		{"[http]\nuser = \"p:m\"\npassword_file = \"pw\"\n", "without \":\""},
	} {
		_, err := Parse("t.toml", []byte(c.text), nil)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%q: %v", c.text, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%q: error %v, want %q", c.text, err, c.want)
		}
	}
	c, _ := Parse("t.toml", nil, nil)
	if c.HTTP.Listen != DefaultHTTPListen || !LoopbackHTTP(c.HTTP.Listen) {
		t.Errorf("default http.listen %q", c.HTTP.Listen)
	}
}
