package senders

import (
	"slices"
	"strings"
	"testing"
)

// malformedFrom are From: values that do not parse as RFC 5322 but whose
// address a mail client still shows: each must still be found, so a
// malformed header cannot slip past a recipient's blocklist.
var malformedFrom = []string{
	"Spammer <spammer@bad.example>>",                        // stray closing bracket
	"Spammer <<spammer@bad.example>",                        // stray opening bracket
	"Spammer <spammer@bad.example",                          // unclosed bracket
	"<spammer@bad.example",                                  // unclosed bracket, no name
	"spammer@bad.example;",                                  // trailing semicolon
	"spammer@bad.example,",                                  // trailing comma
	"spammer@bad.example garbage",                           // trailing junk
	"<spammer@bad.example> junk",                            // trailing junk after brackets
	"Spammer <spammer@bad.example> (unclosed comment",       // unclosed comment after
	"(Spammer spammer@bad.example",                          // unclosed comment before
	"spammer@bad.example (Spammer))",                        // stray closing parenthesis
	`"Spammer <spammer@bad.example>`,                        // unclosed quote
	"Spammer, Inc. <spammer@bad.example>",                   // unquoted comma in the name
	"Spammer@Home <spammer@bad.example>",                    // unquoted @ in the name
	"Spammer [Sales] <spammer@bad.example>",                 // unquoted brackets in the name
	"Friends: spammer@bad.example",                          // group never closed
	"Friends: spammer@bad.example, other@good.example",      // group never closed, two members
	"=?utf-8?q?Spammer?= <spammer@bad.example",              // encoded name, unclosed bracket
	"=?utf-8?q?spammer=40bad.example?=",                     // the address in an encoded word
	"=?utf-8?x?Spammer?= <spammer@bad.example>",             // an encoded word that does not decode
	"Spammer <spammer@bad.example>\x00",                     // a NUL after
	"Spam\x00mer <spammer@bad.example>",                     // a NUL in the name
	"friend@good.example spammer@bad.example",               // two addresses without a comma
	`"Friend" <friend@good.example>, spammer@bad.example <`, // a broken second address
	// as Postfix hands over two of them from a local client: its own
	// domain appended to what it took for a local part
	`"Spammer <spammer@bad.example>"@mx.example.edu`,
	"=?utf-8?q?spammer=40bad.example?=@mx.example.edu",
}

func TestFromAddressesMalformed(t *testing.T) {
	escaped := 0
	for _, in := range malformedFrom {
		got := FromAddresses(in)
		if !slices.Contains(got, "spammer@bad.example") {
			escaped++
			t.Errorf("%q: got %q, want spammer@bad.example among them", in, got)
		}
	}
	t.Logf("%d of %d malformed From: values escaped", escaped, len(malformedFrom))
}

// A From: that parses is taken as it parses: an address in its display
// name is not the author's (mailing lists write "bob@x via List").
func TestFromAddressesWellFormedNotGuessed(t *testing.T) {
	got := FromAddresses(`"spammer@bad.example via Announce" <announce@good.example>`)
	if len(got) != 1 || got[0] != "announce@good.example" {
		t.Fatalf("got %q", got)
	}
	if got := FromAddresses("not an address at all"); len(got) != 0 {
		t.Fatalf("got %q", got)
	}
	if strings.Contains(strings.Join(FromAddresses("Spammer <spammer@bad.example>>"), " "), ">") {
		t.Fatal("brackets kept")
	}
}
