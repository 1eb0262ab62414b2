package quota

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mailguard/internal/dovecotauth"
)

// FuzzUserdbReply gives a userdb lookup whatever the auth-userdb socket
// answers. Whatever the bytes: no panic; an error finds no one; a user
// found has the address asked for, an absolute clean Maildir without NUL,
// and limits that are not negative; and that answer is kept: asked again,
// the same user comes from the cache without a second question.
func FuzzUserdbReply(f *testing.F) {
	for _, s := range []string{
		"VERSION\t1\t2\nSPID\t42\nUSER\t1\talice@example.edu\thome=/var/mail/alice\tquota_rule=*:storage=1G:messages=1000\n",
		"VERSION\t1\t2\nUSER\t1\talice@example.edu\tmail=maildir:~/Mail:LAYOUT=fs\thome=/h/a\tforward\tvacation=no\n",
		"VERSION\t1\t2\nUSER\t1\talice@example.edu\tmail=mdbox:~/mdbox\thome=/h\n",
		"USER\t1\talice@example.edu\tmail=maildir:relative/x\thome=/h/../a\tquota_rule=*:bytes=10MB\n",
		"USER\t1\talice@example.edu\tmail=maildir:/m/\x010a\tquota_rule=*:storage=+10M:messages=-1\n",
		"USER\t1\talice@example.edu\n",
		"NOTFOUND\t1\n",
		"FAIL\t1\treason=database down\n",
		"VERSION\t2\t0\n",
		"CUID\t1\n",
		"USER\t2\talice@example.edu\thome=/h\n",
		"USER\t1\talice@example.edu\thome=/h",
		"",
	} {
		f.Add(s)
	}
	sock := filepath.Join(f.TempDir(), "auth-userdb")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	reply := make(chan string, 1)
	var asked atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			asked.Add(1)
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if strings.HasPrefix(line, "USER\t") {
						break
					}
				}
				select {
				case r := <-reply:
					c.Write([]byte(r))
				default:
					c.Write([]byte("FAIL\t1\treason=asked twice\n"))
				}
			}()
		}
	}()
	f.Fuzz(func(t *testing.T, answer string) {
		reply <- answer
		udb := &Userdb{Client: &dovecotauth.Client{Path: sock, Timeout: 2 * time.Second}, Cache: time.Minute,
			Maildir: "~/Maildir", ForwardFields: []string{"forward"}, AutoreplyFields: []string{"vacation"}, Delimiter: "+"}
		defer udb.Client.Close()
		before := asked.Load()
		user, found, err := udb.Lookup(context.Background(), "<Alice+lists@Example.EDU>")
		if err != nil {
			if user != nil || found {
				t.Fatalf("an error (%v) with a user: %+v", err, user)
			}
			return
		}
		if found != (user != nil) {
			t.Fatalf("found %v, user %+v", found, user)
		}
		if user != nil {
			if user.Address != "alice@example.edu" || !filepath.IsAbs(user.Maildir) || filepath.Clean(user.Maildir) != user.Maildir ||
				strings.ContainsRune(user.Maildir, 0) || user.Quota < 0 || user.Count < 0 {
				t.Fatalf("answer %q gave %+v", answer, user)
			}
		}
		again, _, err := udb.Lookup(context.Background(), "alice@example.edu")
		if err != nil || again != user || asked.Load() != before+1 {
			t.Fatalf("asked again: %+v %v, %d questions", again, err, asked.Load()-before)
		}
	})
}

// FuzzQuotaRule: a quota_rule gives limits that are never negative, and a
// plain size in any unit reads as that many bytes.
func FuzzQuotaRule(f *testing.F) {
	for _, s := range []string{"*:storage=1G", "*:storage=100K:messages=1000", "*:bytes=10MB", "*:storage=+10M", "*:storage=10%",
		"Trash:storage=1G", "*:messages=-5", "*:storage=9223372036854775807T", "*:storage=", "*"} {
		f.Add(s, int64(25), byte('M'))
	}
	f.Fuzz(func(t *testing.T, rule string, n int64, unit byte) {
		if b, m := parseQuotaRule(rule); b < 0 || m < 0 {
			t.Fatalf("%q: %d bytes, %d messages", rule, b, m)
		}
		mult := map[byte]int64{'b': 1, 'B': 1, 'k': 1 << 10, 'K': 1 << 10, 'm': 1 << 20, 'M': 1 << 20, 'g': 1 << 30, 'G': 1 << 30, 't': 1 << 40, 'T': 1 << 40}[unit]
		if n <= 0 || mult == 0 || n > (1<<62)/mult {
			return
		}
		for _, key := range []string{"storage", "bytes"} {
			v := strconv.FormatInt(n, 10) + string(unit)
			if b, _ := parseQuotaRule("*:" + key + "=" + v); b != n*mult {
				t.Fatalf("%s=%s read as %d bytes, want %d", key, v, b, n*mult)
			}
		}
	})
}

// FuzzUserName: the name a recipient (as the MTA sends it, the client's
// choice) is looked up under in the userdb: a name Dovecot's protocol can
// carry (no blank, control character, tab or line end) of bounded length,
// its domain in lower case, and the same for the address written in
// another case or with a +detail.
func FuzzUserName(f *testing.F) {
	for _, s := range []string{"<Alice+lists@Example.EDU>", "alice@example.edu", "<@relay:a@b>", "a@", "@b", "a\tb@c", "a@b/../c", "\"a b\"@c", "a@b@c", "<>"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, rcpt string, caseSensitive bool) {
		u := &Userdb{Delimiter: "+", CaseSensitiveLocal: caseSensitive}
		name, ok := u.userName(rcpt)
		if !ok {
			return
		}
		at := strings.LastIndexByte(name, '@')
		local, domain := name[:max(at, 0)], name[at+1:]
		if at <= 0 || domain == "" || len(name) > 320 || strings.ContainsAny(name, "\t\r\n\x00 ") || strings.ContainsAny(domain, "/\\") ||
			strings.ToLower(domain) != domain || (!caseSensitive && strings.ToLower(local) != local) || strings.Index(local, "+") > 0 {
			t.Fatalf("%q looked up as %q", rcpt, name)
		}
		if strings.HasPrefix(local, "+") || len(local) > 62 || len(name) > 318 {
			return // all detail (kept whole), or no room for one
		}
		upper := strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' {
				return r - 'a' + 'A'
			}
			return r
		}, domain)
		if again, ok := u.userName("<" + local + "+x@" + upper + ">"); !ok || again != name {
			t.Fatalf("%q looked up as %q, with a detail and the domain in capitals as %q", rcpt, name, again)
		}
	})
}
