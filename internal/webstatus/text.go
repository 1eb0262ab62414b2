package webstatus

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode"
)

// Fetch reads /status.json from base ("http://127.0.0.1:8899").
func Fetch(client *http.Client, base string, auth Auth) (*Snapshot, error) {
	req, err := http.NewRequest("GET", strings.TrimRight(base, "/")+"/status.json", nil)
	if err != nil {
		return nil, err
	}
	if auth.User != "" {
		req.SetBasicAuth(auth.User, auth.Password)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s", base, resp.Status)
	}
	var snap Snapshot
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&snap); err != nil {
		return nil, fmt.Errorf("%s: %w", base, err)
	}
	return &snap, nil
}

// Healthy reports whether nothing in the snapshot needs a person: every
// service up, the latest configuration load good.
func (s *Snapshot) Healthy() bool {
	for _, h := range s.Health {
		if !h.Up {
			return false
		}
	}
	return s.Config.OK
}

// WriteText writes the snapshot for a terminal. Strings that came from
// SMTP clients have their control characters shown as \x.. escapes, so a
// hostile sender cannot move the cursor or recolour the terminal.
func (s *Snapshot) WriteText(w io.Writer, recent int) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("mailguard %s, up %s\n", s.Version, s.Now.Sub(s.Started).Round(time.Second))
	state := "loaded"
	if !s.Config.OK {
		state = "RELOAD FAILED"
	}
	file := s.Config.File
	if file == "" {
		file = "built-in defaults"
	}
	p("configuration: %s %s from %s", state, s.Config.LoadedAt.Local().Format("2006-01-02 15:04:05"), file)
	if s.Config.Message != "" {
		p(" (%s)", s.Config.Message)
	}
	p("\nfilters: %s\n", strings.Join(s.Config.Filters, ", "))
	p("sessions in flight: %.0f\n", s.InFlight)
	p("messages: %.0f since start, %d in the last hour, %d in the last day\n", s.Messages, s.LastHour.Messages, s.LastDay.Messages)
	if s.CaptureOn != nil {
		state := "off"
		if *s.CaptureOn {
			state = "ON (copies are being made)"
		}
		p("capture: %s%s\n", state, counts(s.Captured))
	}
	for _, h := range s.Health {
		state := "up"
		if !h.Up {
			state = "DOWN"
		}
		p("%s %s: %s (%.1f ms)\n", h.Name, h.Target, state, h.PingSeconds*1000)
	}
	list := func(title string, l []Count) {
		if len(l) == 0 {
			return
		}
		p("%s:\n", title)
		for _, c := range l {
			p("  %8.0f  %s\n", c.Value, terminalSafe(c.Key))
		}
	}
	list("refusals, last hour", s.LastHour.Refusals)
	list("refusals, last day", s.LastDay.Refusals)
	list("verdicts since start", s.Verdicts)
	list("top hits since start", s.TopHits)
	list("filter failures since start", s.Failures)
	list("reloads since start", s.Reloads)
	if recent > 0 && len(s.Recent) > 0 {
		p("recent decisions:\n")
		for _, d := range s.Recent[:min(recent, len(s.Recent))] {
			rcpts := strings.Join(d.Rcpts, ",")
			if d.More > 0 {
				rcpts += fmt.Sprintf(" and %d more", d.More)
			}
			reason := d.Reason
			if d.Filter != "" {
				reason = d.Filter + ": " + reason
			}
			p("  %s  %s  <%s> -> %s  %s  %s\n", d.Time.Local().Format("15:04:05"), terminalSafe(d.Client),
				terminalSafe(d.From), terminalSafe(rcpts), terminalSafe(d.Verdict), terminalSafe(reason))
		}
	}
}

func counts(l []Count) string {
	var b strings.Builder
	for _, c := range l {
		fmt.Fprintf(&b, ", %s %.0f", c.Key, c.Value)
	}
	return b.String()
}

// terminalSafe escapes control characters.
func terminalSafe(s string) string {
	if strings.IndexFunc(s, unicode.IsControl) < 0 {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsControl(r) {
			fmt.Fprintf(&b, "\\x%02x", r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
