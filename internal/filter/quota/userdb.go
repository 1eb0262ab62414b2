package quota

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"mailguard/internal/dovecotauth"
	"mailguard/internal/userdir"
)

// Userdb finds recipients in Dovecot's userdb (through its auth-userdb
// socket) instead of a users file, and keeps each answer for Cache.
//
// From a user's userdb fields it takes:
//   - the Maildir: mail=maildir:PATH (options after a further ":" are
//     Dovecot's, "~" is home), else home joined with Maildir ("~/Maildir");
//     a mail location of another format is not a Maildir: passed;
//   - the limits: quota_rule=*:storage=SIZE (kilobytes unless a unit
//     follows: b, k, M, G, T), *:bytes=SIZE, *:messages=N; they win over
//     maildirsize's definition, which Dovecot rewrites from them anyway;
//   - forwarding and auto-reply: any field named in ForwardFields or
//     AutoreplyFields, bare or with a value other than "no", "0",
//     "false", "off".
type Userdb struct {
	Client *dovecotauth.Client
	Cache  time.Duration
	// LocalPartOnly asks for "alice" rather than "alice@example.edu".
	LocalPartOnly      bool
	Maildir            string
	ForwardFields      []string
	AutoreplyFields    []string
	CaseSensitiveLocal bool
	Delimiter          string
	Now                func() time.Time

	mu      sync.Mutex
	entries map[string]userdbEntry
}

type userdbEntry struct {
	user  *userdir.User // nil: not in the userdb
	until time.Time
}

// maxCached bounds the cache; a site's users fit many times over.
const maxCached = 500000

// Lookup finds a recipient's account: false for a recipient the userdb
// does not know (passed), an error when the userdb could not answer.
func (u *Userdb) Lookup(ctx context.Context, rcpt string) (*userdir.User, bool, error) {
	name, ok := u.userName(rcpt)
	if !ok {
		return nil, false, nil
	}
	now := u.now()
	u.mu.Lock()
	e, hit := u.entries[name]
	u.mu.Unlock()
	if hit && now.Before(e.until) {
		return e.user, e.user != nil, nil
	}
	rep, err := u.Client.Lookup(ctx, name)
	if err != nil {
		return nil, false, err // not cached: the next RCPT asks again
	}
	var user *userdir.User
	if rep.Found {
		user = u.account(name, rep.Fields)
	}
	u.store(name, userdbEntry{user: user, until: now.Add(u.Cache)}, now)
	return user, user != nil, nil
}

func (u *Userdb) now() time.Time {
	if u.Now != nil {
		return u.Now()
	}
	return time.Now()
}

func (u *Userdb) store(name string, e userdbEntry, now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.entries == nil {
		u.entries = map[string]userdbEntry{}
	}
	if len(u.entries) >= maxCached {
		for k, old := range u.entries {
			if !now.Before(old.until) {
				delete(u.entries, k)
			}
		}
		if len(u.entries) >= maxCached {
			clear(u.entries)
		}
	}
	u.entries[name] = e
}

// userName is what the userdb is asked for: the address folded as the
// users file folds it (domain lower case, local part too unless
// case-sensitive, "+detail" cut), or its local part.
func (u *Userdb) userName(rcpt string) (string, bool) {
	addr := strings.TrimSuffix(strings.TrimPrefix(rcpt, "<"), ">")
	at := strings.LastIndexByte(addr, '@')
	if len(addr) > 320 || at <= 0 || at == len(addr)-1 || at > 64 {
		return "", false
	}
	for i := 0; i < len(addr); i++ {
		if c := addr[i]; c <= ' ' || c == 0x7f {
			return "", false
		}
	}
	local, domain := addr[:at], strings.ToLower(addr[at+1:])
	if strings.ContainsAny(domain, "/\\@") {
		return "", false
	}
	if !u.CaseSensitiveLocal {
		local = strings.ToLower(local)
	}
	if u.Delimiter != "" {
		if i := strings.Index(local, u.Delimiter); i > 0 {
			local = local[:i]
		}
	}
	if u.LocalPartOnly {
		return local, true
	}
	return local + "@" + domain, true
}

// account reads the fields mailguard uses; nil when the user has no
// Maildir mailguard can find (not a Maildir, no home).
func (u *Userdb) account(name string, fields map[string]string) *userdir.User {
	home := fields["home"]
	dir := ""
	if mail, ok := fields["mail"]; ok && mail != "" {
		format, rest, _ := strings.Cut(mail, ":")
		if format != "maildir" {
			return nil
		}
		dir, _, _ = strings.Cut(rest, ":")
	} else {
		dir = u.Maildir
		if dir == "" {
			dir = "~/Maildir"
		}
	}
	if p, ok := strings.CutPrefix(dir, "~"); ok {
		if home == "" {
			return nil
		}
		dir = home + p
	} else if !filepath.IsAbs(dir) && home != "" {
		dir = filepath.Join(home, dir)
	}
	if !filepath.IsAbs(dir) || strings.ContainsRune(dir, 0) {
		return nil
	}
	user := &userdir.User{Address: name, Maildir: filepath.Clean(dir)}
	user.Quota, user.Count = parseQuotaRule(fields["quota_rule"])
	user.Forward = anySet(fields, u.ForwardFields)
	user.Autoreply = anySet(fields, u.AutoreplyFields)
	return user
}

func anySet(fields map[string]string, names []string) bool {
	for _, n := range names {
		if v, ok := fields[n]; ok {
			switch strings.ToLower(strings.TrimSpace(v)) {
			case "no", "0", "false", "off":
			default:
				return true
			}
		}
	}
	return false
}

// parseQuotaRule reads Dovecot's quota_rule for all mailboxes,
// "*:storage=1G:messages=10000"; 0 for a limit it does not set or that
// mailguard does not understand (a relative "+10M" or "10%"), which
// then comes from maildirsize or default_quota.
func parseQuotaRule(rule string) (bytes, messages int64) {
	parts := strings.Split(rule, ":")
	if len(parts) < 2 || parts[0] != "*" {
		return 0, 0
	}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch strings.ToLower(k) {
		case "storage":
			bytes = quotaSize(v, 1024)
		case "bytes":
			bytes = quotaSize(v, 1)
		case "messages":
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
				messages = n
			}
		}
	}
	return bytes, messages
}

// quotaSize reads "1G", "500M", "100k", "1024b", or a plain number of
// units.
func quotaSize(v string, unit int64) int64 {
	v = strings.TrimSpace(v)
	if v == "" || v[0] < '0' || v[0] > '9' || strings.HasSuffix(v, "%") {
		return 0 // relative to another rule ("+10M", "-1G", "10%")
	}
	if len(v) > 1 && (v[len(v)-1] == 'B' || v[len(v)-1] == 'b') && strings.ContainsAny(v[len(v)-2:len(v)-1], "kKmMgGtT") {
		v = v[:len(v)-1] // "10MB"
	}
	mult := unit
	if n := len(v); n > 0 {
		switch v[n-1] {
		case 'b', 'B':
			mult = 1
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case 't', 'T':
			mult = 1 << 40
		}
		if strings.IndexByte("bBkKmMgGtT", v[n-1]) >= 0 {
			v = v[:n-1]
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0
	}
	return n * mult
}
