package verdict

import "testing"

func TestReply(t *testing.T) {
	cases := []struct {
		name string
		v    Verdict
		code int
		enh  string
		text string
	}{
		{"virus", Rejectf(550, EnhSecurity, "VIRUS FOUND"), 550, "5.7.0", "VIRUS FOUND"},
		{"quota", Rejectf(CodeExceededStorage, EnhMailboxFull, "Mailbox full"), 552, "5.2.2", "Mailbox full"},
		{"reject defaults", Verdict{Action: Reject}, 550, "5.7.1", "Message refused"},
		{"tempfail defaults", Verdict{Action: TempFail}, 451, "4.3.0", "Try again later"},
		{"reject with 4xx code is fixed to 5xx", Verdict{Action: Reject, Code: 451, Enhanced: "4.3.0"}, 550, "5.7.1", "Message refused"},
		{"tempfail with 5xx code is fixed to 4xx", Verdict{Action: TempFail, Code: 550, Enhanced: "5.7.0"}, 451, "4.3.0", "Try again later"},
		{"421 kept", TempFailf(421, EnhSecurityTemp, "go away"), 421, "4.7.1", "go away"},
		{"control characters removed", Rejectf(550, EnhSecurity, "a\r\nb\x00c"), 550, "5.7.0", "a  b c"},
		{"continue has no reply", Pass, 0, "", ""},
		{"accept has no reply", Verdict{Action: Accept}, 0, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, enh, text := c.v.Reply()
			if code != c.code || enh != c.enh || text != c.text {
				t.Errorf("Reply() = %d %q %q, want %d %q %q", code, enh, text, c.code, c.enh, c.text)
			}
		})
	}
}

func TestString(t *testing.T) {
	if s := Rejectf(550, EnhSecurity, "VIRUS FOUND").String(); s != "reject 550 5.7.0 VIRUS FOUND" {
		t.Errorf("got %q", s)
	}
	if s := Pass.String(); s != "continue" {
		t.Errorf("got %q", s)
	}
}
