package milterdoor

import (
	"github.com/d--j/go-milter/milterutil"

	"mailguard/internal/verdict"
)

// reply maps a verdict to the milter reply code and data. Refusals carry
// the SMTP code, the enhanced code and the text; the text was made for the
// client (verdict.Reply), so no internal error can leak here.
func reply(v verdict.Verdict) (byte, []byte) {
	switch v.Action {
	case verdict.Continue:
		return replyContinue, nil
	case verdict.Accept:
		return replyAccept, nil
	case verdict.Discard:
		return replyDiscard, nil
	}
	code, enh, text := v.Reply()
	line, err := milterutil.FormatResponse(uint16(code), enh+" "+text)
	if err == nil {
		return replyReplyCode, append([]byte(line), 0)
	}
	// Reply cannot produce a code or text the formatter refuses; should it
	// ever, the MTA's own default reply is still the right class.
	if v.Action == verdict.TempFail {
		return replyTempFail, nil
	}
	return replyReject, nil
}
