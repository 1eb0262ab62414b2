package webstatus

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"mailguard/internal/metrics"
)

// renderWith renders a page whose one decision and one refusal carry the
// given client-chosen strings.
func renderWith(t testing.TB, client, from, rcpt, reason string) string {
	a := metrics.NewActivity(nil)
	a.Decision(metrics.Decision{Client: client, From: from, Rcpts: []string{rcpt}, Verdict: "reject 550 5.7.1 x", Filter: "senders", Reason: reason, Key: "senders:" + reason})
	snap := &Snapshot{Now: time.Now(), Started: time.Now(), Recent: a.Recent(), hour: a.Series(60, time.Minute), day: a.Series(96, 15*time.Minute)}
	snap.TopHits = []Count{{Key: "senders:" + reason, Value: 1}}
	var b bytes.Buffer
	if err := renderPage(&b, snap); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// Whatever strings a client chooses, the page has no element, attribute
// or script of theirs: every one shows up as text.
func FuzzPageEscapes(f *testing.F) {
	f.Add("192.0.2.1", `<script>alert(1)</script>@x`, `"><img src=x onerror=alert(1)>@y`, `</td></tr></table><svg onload=alert(1)>`)
	f.Add("'\"><iframe>", "a@b", "\x00\xff\ufeff", "]]></title><script>")
	f.Fuzz(func(t *testing.T, client, from, rcpt, reason string) {
		page := renderWith(t, client, from, rcpt, reason)
		z := html.NewTokenizer(strings.NewReader(page))
		for {
			tt := z.Next()
			if tt == html.ErrorToken {
				break
			}
			if tt != html.StartTagToken && tt != html.SelfClosingTagToken {
				continue
			}
			tok := z.Token()
			switch tok.Data {
			case "script", "img", "iframe", "object", "embed", "link", "base", "form", "a":
				t.Fatalf("a client's string became a <%s> element", tok.Data)
			}
			for _, at := range tok.Attr {
				if strings.HasPrefix(strings.ToLower(at.Key), "on") {
					t.Fatalf("a client's string became an %s attribute on <%s>", at.Key, tok.Data)
				}
			}
		}
	})
}

// The hostile sender is on the page as text, escaped.
func TestPageShowsHostileSenderAsText(t *testing.T) {
	page := renderWith(t, "192.0.2.1", `<script>alert(1)</script>@x`, "u@example.edu", "blocked")
	if strings.Contains(page, "<script>") || !strings.Contains(page, "&lt;script&gt;alert(1)&lt;/script&gt;@x") {
		t.Fatalf("page:\n%s", page)
	}
}
