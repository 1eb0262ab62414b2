package milterdoor

import (
	"sort"
	"strings"

	"github.com/d--j/go-milter"

	"mailguard/internal/pipeline"
)

// macroSlots is libmilter's macro stages (SMFIM_CONNECT .. SMFIM_EOH), and
// one more for the macros sent with other commands (header, abort,
// unknown).
const macroSlots = int(milter.StageEndMarker) + 1

// maxMacroBytes bounds what one stage's macros may keep: Postfix and
// Sendmail send a few hundred bytes; more is a broken or hostile peer.
const maxMacroBytes = 16 << 10

// macroStore keeps the MTA's macros per stage with libmilter's lifetimes:
// a stage's macros replace that stage's previous ones and clear every
// later stage's (a new MAIL clears the last message's RCPT macros); the
// end of a message clears the message's stages. The raw name\0value\0
// pairs are copied into buffers reused across messages, so keeping them
// costs no allocation after the first message.
type macroStore struct {
	raw [macroSlots][]byte
}

// macroSlot maps a command to the stage its macros belong to.
func macroSlot(cmd byte) int {
	switch cmd {
	case cmdConnect:
		return int(milter.StageConnect)
	case cmdHelo:
		return int(milter.StageHelo)
	case cmdMail:
		return int(milter.StageMail)
	case cmdRcpt:
		return int(milter.StageRcpt)
	case cmdData:
		return int(milter.StageData)
	case cmdEOH:
		return int(milter.StageEOH)
	case cmdEOB:
		return int(milter.StageEOM)
	}
	return int(milter.StageEndMarker)
}

// laterSlots lists, for each slot, the slots a new set of its macros
// clears: those of the stages that come after it in a session.
var laterSlots = func() [macroSlots][]int {
	order := []int{int(milter.StageConnect), int(milter.StageHelo), int(milter.StageMail), int(milter.StageRcpt),
		int(milter.StageData), int(milter.StageEOH), int(milter.StageEOM), int(milter.StageEndMarker)}
	var out [macroSlots][]int
	for i, s := range order {
		out[s] = order[i+1:]
	}
	return out
}()

// set stores a macro packet's pairs (data after the command byte) for cmd.
func (m *macroStore) set(cmd byte, pairs []byte) {
	slot := macroSlot(cmd)
	if len(pairs) > maxMacroBytes {
		pairs = pairs[:maxMacroBytes]
	}
	m.raw[slot] = append(m.raw[slot][:0], pairs...)
	for _, later := range laterSlots[slot] {
		m.raw[later] = m.raw[later][:0]
	}
}

// clearFrom forgets the macros of slot's stage and every later one.
func (m *macroStore) clearFrom(slot int) {
	m.raw[slot] = m.raw[slot][:0]
	for _, later := range laterSlots[slot] {
		m.raw[later] = m.raw[later][:0]
	}
}

// Macro looks a macro up, newest stage first; "{name}" and "name" are the
// same macro.
func (m *macroStore) Macro(name string) (string, bool) {
	want := bare(name)
	for slot := macroSlots - 1; slot >= 0; slot-- {
		b := m.raw[slot]
		for len(b) > 0 {
			var k, v []byte
			k, b = nextCString(b)
			v, b = nextCString(b)
			if bareBytes(k) == want {
				return string(v), true
			}
		}
	}
	return "", false
}

func bare(name string) string {
	if len(name) > 2 && name[0] == '{' && name[len(name)-1] == '}' {
		return name[1 : len(name)-1]
	}
	return name
}

// bareBytes compares without allocating: the conversion in a comparison
// is free.
func bareBytes(b []byte) string {
	if len(b) > 2 && b[0] == '{' && b[len(b)-1] == '}' {
		b = b[1 : len(b)-1]
	}
	return string(b)
}

// doorMacros are the macros the door itself reads: the queue id, which
// Sendmail sends with MAIL and Postfix with MAIL and at the end of the
// message.
var doorMacros = map[pipeline.Stage][]string{
	pipeline.StageMail:         {"i"},
	pipeline.StageRcpt:         {"i"},
	pipeline.StageEndOfMessage: {"i"},
}

// macroStages maps pipeline stages to libmilter's macro stages.
var macroStages = []struct {
	stage pipeline.Stage
	slot  milter.MacroStage
}{
	{pipeline.StageConnect, milter.StageConnect},
	{pipeline.StageHelo, milter.StageHelo},
	{pipeline.StageMail, milter.StageMail},
	{pipeline.StageRcpt, milter.StageRcpt},
	{pipeline.StageEndOfHeaders, milter.StageEOH},
	{pipeline.StageEndOfMessage, milter.StageEOM},
}

// macroRequest is the list of macros to ask the MTA for at each stage: the
// door's own and every filter's, "{name}" for long names as the MTAs
// expect. Nil when no filter reads macros: the MTA then sends its
// defaults, which include what the door needs.
func macroRequest(p *pipeline.Pipeline) map[milter.MacroStage]string {
	want := p.Macros()
	if len(want) == 0 {
		return nil
	}
	out := map[milter.MacroStage]string{}
	for _, ms := range macroStages {
		seen := map[string]bool{}
		var names []string
		for _, list := range [][]string{doorMacros[ms.stage], want[ms.stage]} {
			for _, n := range list {
				n = bare(n)
				if len(n) > 1 {
					n = "{" + n + "}"
				}
				if n != "" && !seen[n] {
					seen[n] = true
					names = append(names, n)
				}
			}
		}
		sort.Strings(names)
		out[ms.slot] = strings.Join(names, " ")
	}
	return out
}

// macrosCovered reports whether a connection negotiated with req delivers
// every macro p reads (or negotiated no lists, so the MTA sends its own).
func macrosCovered(req map[milter.MacroStage]string, p *pipeline.Pipeline) bool {
	if req == nil {
		return len(p.Macros()) == 0
	}
	for st, need := range macroRequest(p) {
		have := " " + req[st] + " "
		for _, n := range strings.Fields(need) {
			if !strings.Contains(have, " "+n+" ") {
				return false
			}
		}
	}
	return true
}
