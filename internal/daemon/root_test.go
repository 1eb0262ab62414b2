package daemon

import (
	"errors"
	"testing"

	"mailguard/internal/filters"
)

func TestRootAllowed(t *testing.T) {
	for _, c := range []struct {
		name       string
		euid       int
		opts       Options
		allowInCfg bool
		root       bool
		err        error
	}{
		{"not root", 1000, Options{ConfigFile: "m.toml"}, false, false, nil},
		{"root with a config file", 0, Options{ConfigFile: "m.toml"}, false, true, ErrRoot},
		{"root, --allow-root", 0, Options{ConfigFile: "m.toml", AllowRoot: true}, false, true, nil},
		{"root, allow_root", 0, Options{ConfigFile: "m.toml"}, true, true, nil},
		{"root on the built-in defaults", 0, Options{}, false, true, nil},
	} {
		cfg := filters.Default()
		cfg.AllowRoot = c.allowInCfg
		root, err := rootAllowed(c.euid, c.opts, cfg)
		if root != c.root || !errors.Is(err, c.err) {
			t.Errorf("%s: root %v, err %v; want %v, %v", c.name, root, err, c.root, c.err)
		}
	}
}
