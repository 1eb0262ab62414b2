package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"mailguard/internal/userdir"
)

// Section is one filter's part of the file, [name]. A filter owns its
// section type: a struct whose fields carry toml tags, embedding Common,
// returned by its constructor with every default set. Keys the file does
// not name keep their defaults.
type Section interface {
	// Validate checks the decoded values (and resolves relative paths),
	// reporting problems through v, which places them at their lines.
	// enabled tells whether the filter is in `filters`: keys a running
	// filter needs are required only then.
	Validate(v *Checker, enabled bool)
	commonKeys() *Common
}

// Common holds the keys every filter section has.
type Common struct {
	// Mode is "enforce" or "monitor" (log and mark what would be refused,
	// deliver).
	Mode string `toml:"mode"`
	// OnError is what a failure means for the message: "tempfail",
	// "accept" or "reject".
	OnError string `toml:"on_error"`
	// Timeout bounds each call of the filter.
	Timeout Duration `toml:"timeout"`
}

// DefaultFilterTimeout is every filter's timeout unless its section says
// otherwise: well under Postfix's milter_command_timeout (30 s).
const DefaultFilterTimeout = 10 * time.Second

// maxFilterTimeout keeps a filter's timeout under Postfix's
// milter_content_timeout (300 s), the longest an MTA waits at all.
const maxFilterTimeout = 4 * time.Minute

// NewCommon returns the common keys' defaults with the filter's on_error.
func NewCommon(onError string) Common {
	return Common{Mode: "enforce", OnError: onError, Timeout: Duration{Duration: DefaultFilterTimeout}}
}

func (c *Common) commonKeys() *Common { return c }

// CommonOf returns a section's common keys.
func CommonOf(s Section) *Common { return s.commonKeys() }

// Size is a byte count written as a string: "500K", "25M", "1G" (powers of
// 1024), or a plain number of bytes.
type Size struct {
	Bytes int64
	text  *string // as written in the file, until checked
}

// UnmarshalText keeps the text; Checker parses it, so every bad value in
// the file is reported at once.
func (s *Size) UnmarshalText(b []byte) error {
	t := string(b)
	s.text = &t
	return nil
}

// Duration is a positive duration written as a string: "30s", "5m".
type Duration struct {
	time.Duration
	text *string
}

// UnmarshalText keeps the text for Checker.
func (d *Duration) UnmarshalText(b []byte) error {
	t := string(b)
	d.text = &t
	return nil
}

// Checker collects a configuration's problems, each at its file and line.
type Checker struct {
	file   string
	lines  map[string]int
	errs   []error
	prefix string          // "name." inside a filter's section
	bad    map[string]bool // the top-level keys and sections with problems
}

func (v *Checker) fail(key, format string, args ...any) {
	v.errs = append(v.errs, &Error{File: v.file, Line: v.lines[key], Msg: key + ": " + fmt.Sprintf(format, args...)})
	v.markBad(key)
}

func (v *Checker) markBad(key string) {
	if v.bad == nil {
		v.bad = map[string]bool{}
	}
	top, _, _ := strings.Cut(key, ".")
	v.bad[top] = true
}

// Fail reports a problem with a key of the section.
func (v *Checker) Fail(key, format string, args ...any) { v.fail(v.prefix+key, format, args...) }

// Has reports whether the file names the key.
func (v *Checker) Has(key string) bool { _, ok := v.lines[v.prefix+key]; return ok }

// Require reports a key a running filter needs, when it is empty.
func (v *Checker) Require(key, value, what string) {
	if value == "" {
		v.fail("filters", "the %s filter needs [%s] %s = %s", strings.TrimSuffix(v.prefix, "."), strings.TrimSuffix(v.prefix, "."), key, what)
	}
}

// Path resolves a path the section names against the config file's
// directory, so a configuration means the same wherever the daemon
// starts. A key given as "" is an error.
func (v *Checker) Path(key string, p *string) {
	if !v.Has(key) {
		return
	}
	if strings.TrimSpace(*p) == "" {
		v.Fail(key, "must not be empty")
		return
	}
	if !filepath.IsAbs(*p) && v.file != "" {
		*p = filepath.Join(filepath.Dir(v.file), *p)
	}
}

// Reply checks a reply text: what an SMTP client sees after the code.
func (v *Checker) Reply(key, s string) {
	if strings.TrimSpace(s) == "" || len(s) > 400 {
		v.Fail(key, "reply text must be 1 to 400 characters")
		return
	}
	for _, c := range s {
		if c < 0x20 || c > 0x7e {
			v.Fail(key, "reply text must be printable ASCII on one line")
			return
		}
	}
}

// OneOf checks a value against its choices.
func (v *Checker) OneOf(key, s string, choices ...string) {
	if _, err := oneOf(choices...)(s); err != nil {
		v.Fail(key, "%v", err)
	}
}

// Delimiter checks a recipient delimiter: one character, or "" for none.
func (v *Checker) Delimiter(key, s string) {
	if len(s) > 1 || strings.ContainsAny(s, "@ \t") {
		v.Fail(key, "want one character such as \"+\" or \"-\", or \"\" for none")
	}
}

// checkSection parses the section's sizes and durations, checks its
// common keys, then lets the filter check the rest.
func (v *Checker) checkSection(name string, s Section, enabled bool) {
	sv := &Checker{file: v.file, lines: v.lines, prefix: name + "."}
	sv.parseValues(reflect.ValueOf(s).Elem())
	c := s.commonKeys()
	sv.OneOf("mode", c.Mode, "enforce", "monitor")
	sv.OneOf("on_error", c.OnError, "tempfail", "accept", "reject")
	if c.Timeout.Duration > maxFilterTimeout {
		sv.Fail("timeout", "%s is longer than the MTA waits for a milter; at most %s", c.Timeout.Duration, maxFilterTimeout)
	}
	s.Validate(sv, enabled)
	v.errs = append(v.errs, sv.errs...)
	for k := range sv.bad {
		v.markBad(k)
	}
}

var (
	sizeType     = reflect.TypeOf(Size{})
	durationType = reflect.TypeOf(Duration{})
)

// parseValues parses every Size and Duration field written in the file.
func (v *Checker) parseValues(rv reflect.Value) {
	rt := rv.Type()
	for i := 0; i < rt.NumField(); i++ {
		f, fv := rt.Field(i), rv.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		switch {
		case f.Type == sizeType:
			s := fv.Addr().Interface().(*Size)
			if s.text != nil {
				n, err := userdir.ParseSize(*s.text)
				if err != nil {
					v.Fail(key, "%v", err)
				}
				s.Bytes, s.text = n, nil
			}
		case f.Type == durationType:
			d := fv.Addr().Interface().(*Duration)
			if d.text != nil {
				n, err := parseDuration(*d.text)
				if err != nil {
					v.Fail(key, "%v", err)
				}
				d.Duration, d.text = n, nil
			}
		case f.Anonymous && f.Type.Kind() == reflect.Struct:
			v.parseValues(fv)
		}
	}
}

// field parses an optional global string value into dst, recording any
// error.
func field[T any](v *Checker, dst *T, val *string, key string, parse func(string) (T, error)) {
	if val == nil {
		return
	}
	x, err := parse(*val)
	if err != nil {
		v.fail(key, "%v", err)
		return
	}
	*dst = x
}

var errEmpty = errors.New("must not be empty")
