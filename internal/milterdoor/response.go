package milterdoor

import (
	"github.com/d--j/go-milter"

	"mailguard/internal/verdict"
)

// response maps a verdict to the milter reply. Rejections carry the SMTP
// code, the enhanced code and the text; the text was made for the client
// (verdict.Reply), so no internal error can leak here.
func response(v verdict.Verdict) *milter.Response {
	switch v.Action {
	case verdict.Continue:
		return milter.RespContinue
	case verdict.Accept:
		return milter.RespAccept
	case verdict.Discard:
		return milter.RespDiscard
	}
	code, enh, text := v.Reply()
	r, err := milter.RejectWithCodeAndReason(uint16(code), enh+" "+text)
	if err == nil {
		return r
	}
	// Reply cannot produce a code or text the library refuses; should it
	// ever, the MTA's own default reply is still the right class.
	if v.Action == verdict.TempFail {
		return milter.RespTempFail
	}
	return milter.RespReject
}
