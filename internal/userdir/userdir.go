// Package userdir is the directory of local accounts: which recipient
// addresses are local, where their Maildirs are, and their quota settings.
//
// The file has one account per line:
//
//	# ADDRESS              MAILDIR                      OPTIONS
//	alice@example.edu      /var/mail/example.edu/alice  quota=25M count=1000
//	bob@example.edu        /var/mail/example.edu/bob    forward
//	carol@example.edu      /var/mail/example.edu/carol  autoreply
//
// The MAILDIR column is the only path mailguard ever uses for an account: an
// address is never turned into a path.
package userdir

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"mailguard/internal/linefile"
)

// User is one local account.
type User struct {
	Address   string // as normalized for lookup
	Maildir   string // absolute, cleaned
	Quota     int64  // bytes; 0: not set here
	Count     int64  // messages; 0: not set here
	Forward   bool   // mail is forwarded elsewhere: never refused for quota
	Autoreply bool   // an auto-reply is set: never refused for quota
	Line      int    // where the account is defined
}

// Options say how addresses compare.
type Options struct {
	// CaseSensitiveLocal compares local parts case-sensitively (domains
	// always compare case-insensitively). Most sites fold case.
	CaseSensitiveLocal bool
	// Delimiter separates a local part from its detail ("user+list"); ""
	// turns detail addresses off.
	Delimiter string
	// MaxFileSize refuses a larger file; 0 is no bound.
	MaxFileSize int64
}

// Directory maps addresses to accounts. It is immutable.
type Directory struct {
	opts  Options
	users map[string]*User
}

// Load reads a user directory file.
func Load(path string, opts Options) (*Directory, error) {
	d := newDirectory(opts)
	return d.result(linefile.ReadFile(path, opts.MaxFileSize, d.addLine))
}

// Parse reads a user directory; name is used in errors. Every problem is
// reported, joined, each a *linefile.Error.
func Parse(name string, r io.Reader, opts Options) (*Directory, error) {
	d := newDirectory(opts)
	return d.result(linefile.Read(name, r, d.addLine))
}

func newDirectory(opts Options) *Directory {
	return &Directory{opts: opts, users: map[string]*User{}}
}

func (d *Directory) result(err error) (*Directory, error) {
	if err != nil {
		return nil, err
	}
	return d, nil
}

func (d *Directory) addLine(line int, fields []string) error {
	if len(fields) < 2 {
		return errors.New("want ADDRESS MAILDIR [quota=SIZE] [count=N] [forward] [autoreply]")
	}
	u, err := d.parseUser(fields, line)
	if err != nil {
		return err
	}
	if prev, dup := d.users[u.Address]; dup {
		return fmt.Errorf("%s is listed twice (first at line %d)", fields[0], prev.Line)
	}
	d.users[u.Address] = u
	return nil
}

func (d *Directory) parseUser(fields []string, line int) (*User, error) {
	addr, ok := d.normalize(fields[0])
	if !ok {
		return nil, fmt.Errorf("%q is not a plain address local@domain", fields[0])
	}
	dir := fields[1]
	if !filepath.IsAbs(dir) || strings.ContainsAny(dir, "\x00") {
		return nil, fmt.Errorf("maildir %q must be an absolute path", dir)
	}
	u := &User{Address: addr, Maildir: filepath.Clean(dir), Line: line}
	seen := map[string]bool{}
	for _, opt := range fields[2:] {
		key, val, hasVal := strings.Cut(opt, "=")
		if seen[key] {
			return nil, fmt.Errorf("option %s given twice: which one is meant?", key)
		}
		seen[key] = true
		var err error
		switch {
		case key == "quota" && hasVal:
			u.Quota, err = ParseSize(val)
		case key == "count" && hasVal:
			if u.Count, err = strconv.ParseInt(val, 10, 64); err != nil || u.Count < 0 {
				err = fmt.Errorf("%q is not a number of messages", val)
			}
		case key == "forward" && !hasVal:
			u.Forward = true
		case key == "autoreply" && !hasVal:
			u.Autoreply = true
		default:
			return nil, fmt.Errorf("unknown option %q (want quota=SIZE, count=N, forward, autoreply)", opt)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", opt, err)
		}
	}
	return u, nil
}

// normalize returns the lookup key for an address, or false if it is not
// an address: exactly one "@" with a non-empty local part and domain, no
// blanks, control characters or path separators in the domain, at most 320
// bytes (RFC 5321 §4.5.3.1 limits).
func (d *Directory) normalize(addr string) (string, bool) {
	addr = strings.TrimSuffix(strings.TrimPrefix(addr, "<"), ">")
	if len(addr) > 320 {
		return "", false
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 || at > 64 {
		return "", false
	}
	local, domain := addr[:at], addr[at+1:]
	for i := 0; i < len(addr); i++ {
		if c := addr[i]; c <= ' ' || c == 0x7f {
			return "", false
		}
	}
	if strings.ContainsAny(domain, "/\\@") {
		return "", false
	}
	if !d.opts.CaseSensitiveLocal {
		local = strings.ToLower(local)
	}
	return local + "@" + strings.ToLower(domain), true
}

// Lookup finds the account for a recipient address; "user+detail@domain"
// finds "user@domain". Anything that is not a well-formed address finds
// nothing.
func (d *Directory) Lookup(addr string) (*User, bool) {
	key, ok := d.normalize(addr)
	if !ok {
		return nil, false
	}
	if u, ok := d.users[key]; ok {
		return u, true
	}
	if d.opts.Delimiter == "" {
		return nil, false
	}
	at := strings.LastIndexByte(key, '@')
	if i := strings.Index(key[:at], d.opts.Delimiter); i > 0 {
		u, ok := d.users[key[:i]+key[at:]]
		return u, ok
	}
	return nil, false
}

// Len is the number of accounts.
func (d *Directory) Len() int { return len(d.users) }

// ParseSize reads a size such as "25M", "500K", "1G" or "1048576"
// (K, M, G, T are powers of 1024, as mail quotas count).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case 't', 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size such as 500K, 25M or 1G", s)
	}
	return v * mult, nil
}
