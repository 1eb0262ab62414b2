package dovecotpolicy

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Limits on what one request may cost. Dovecot's requests are a few
// hundred bytes of JSON; its answer is read within its timeout (2 s).
const (
	maxBody        = 16 << 10
	maxHeaderBytes = 8 << 10
	readTimeout    = 5 * time.Second
	writeTimeout   = 5 * time.Second
	// idleTimeout outlives Dovecot's own (http_client_max_idle_time,
	// 10 s), so Dovecot, not the door, closes a kept-alive connection.
	idleTimeout = 60 * time.Second
	// MaxConnections bounds the connections open at once; Dovecot opens
	// at most 100 per auth process.
	MaxConnections = 1000
)

// apiKey is the header a request must carry, from api_key written as
// Dovecot's auth_policy_server_api_header: "Name: value", or a bare value
// Dovecot sends as X-API-Key.
type apiKey struct{ name, value string }

func parseAPIKey(s string) apiKey {
	if s == "" {
		return apiKey{}
	}
	if name, value, ok := strings.Cut(s, ":"); ok && !strings.ContainsAny(name, " \t") && name != "" {
		return apiKey{name: name, value: strings.TrimSpace(value)}
	}
	return apiKey{name: "X-API-Key", value: strings.TrimSpace(s)}
}

func (k apiKey) ok(h http.Header) bool {
	if k.name == "" {
		return true
	}
	got := strings.TrimSpace(h.Get(k.name))
	return subtle.ConstantTimeCompare([]byte(got), []byte(k.value)) == 1
}

// state is what a reload replaces at once.
type state struct {
	policy *Policy
	key    apiKey
	monitor,
	rejectOnError bool
	message string
}

// Handler serves the protocol. Its state is swapped whole on reload.
type Handler struct {
	state atomic.Pointer[state]
	log   *slog.Logger
	stats Hits
	// Bad requests and failures are each logged at most once per
	// quietEvery: a flood must not flood the log.
	bad, failure quietLog
	bodyPool     sync.Pool
	sessions     sessionSeen
}

// sessionSeen remembers the sessions asked about lately. Dovecot asks
// twice about a login whose password was right (before and after
// checking it), with the same attributes; the second answer repeats the
// first, and is not logged or counted again.
type sessionSeen struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

// sessionMemory outlasts a login's password check; maxSessions bounds
// the map under a flood.
const (
	sessionMemory = time.Minute
	maxSessions   = 100000
)

// again records the session and reports whether it was seen within
// sessionMemory.
func (s *sessionSeen) again(id string, now time.Time) bool {
	if len(id) > 1024 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]time.Time{}
	}
	if len(s.seen) >= maxSessions {
		for k, t := range s.seen {
			if now.Sub(t) > sessionMemory {
				delete(s.seen, k)
			}
		}
		if len(s.seen) >= maxSessions/2 {
			clear(s.seen)
		}
	}
	t, ok := s.seen[id]
	s.seen[id] = now
	return ok && now.Sub(t) <= sessionMemory
}

const quietEvery = 10 * time.Second

// quietLog says whether to log now, and how many lines it held back.
type quietLog struct {
	mu    sync.Mutex
	last  time.Time
	quiet int
}

func (q *quietLog) allow(now time.Time) (bool, int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if now.Sub(q.last) < quietEvery {
		q.quiet++
		return false, 0
	}
	n := q.quiet
	q.last, q.quiet = now, 0
	return true, n
}

// NewHandler returns a handler for the policy and the section's keys.
func NewHandler(p *Policy, c *Config, log *slog.Logger, st Hits) *Handler {
	h := &Handler{log: log, stats: st}
	h.bodyPool.New = func() any { return new(bytes.Buffer) }
	h.set(p, c)
	return h
}

func (h *Handler) set(p *Policy, c *Config) {
	h.state.Store(&state{policy: p, key: parseAPIKey(c.APIKey), monitor: c.Mode == "monitor",
		rejectOnError: c.OnError == "reject", message: c.Message})
}

// answer is Dovecot's expected reply: status -1 refuses, 0 allows, N > 0
// holds the login N seconds.
type answer struct {
	Status int    `json:"status"`
	Msg    string `json:"msg"`
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := h.state.Load()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		h.refuse(w, r, http.StatusMethodNotAllowed, "method not allowed: Dovecot POSTs")
		return
	}
	if !st.key.ok(r.Header) {
		h.refuse(w, r, http.StatusUnauthorized, "missing or wrong API key (api_key, Dovecot's auth_policy_server_api_header)")
		return
	}
	command := r.URL.Query().Get("command")
	if command != "allow" && command != "report" {
		h.refuse(w, r, http.StatusBadRequest, "unknown command "+strconv.Quote(limit(command))+": want allow or report")
		return
	}
	buf := h.bodyPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= maxBody*2 {
			buf.Reset()
			h.bodyPool.Put(buf)
		}
	}()
	buf.Reset()
	_, err := buf.ReadFrom(io.LimitReader(r.Body, maxBody+1))
	switch {
	case err != nil:
		h.refuse(w, r, http.StatusBadRequest, "cannot read the request: "+err.Error())
		return
	case buf.Len() > maxBody:
		h.refuse(w, r, http.StatusRequestEntityTooLarge, "request larger than "+strconv.Itoa(maxBody)+" bytes")
		return
	}
	req, problem := parseRequest(buf.Bytes())
	if problem != "" {
		h.refuse(w, r, http.StatusBadRequest, problem)
		return
	}
	if command == "report" {
		if err := st.policy.Report(r.Context(), req); err != nil {
			h.failed("report", err)
		}
		reply(w, answer{})
		return
	}
	// A new password in the same session (POP3 allows several PASS) is a
	// new attempt.
	repeated := req.SessionID != "" && h.sessions.again(req.SessionID+"\x00"+req.Login+"\x00"+req.PasswordHash, time.Now())
	d, err := st.policy.Allow(r.Context(), req)
	if err != nil {
		h.failed("allow", err)
		if st.rejectOnError {
			reply(w, answer{Status: -1, Msg: st.message})
			return
		}
		reply(w, answer{})
		return
	}
	if d.Action == Allow {
		if d.Reason != "" && h.stats != nil && !repeated {
			h.stats.Hit(Name, d.Reason)
		}
		reply(w, answer{})
		return
	}
	if !repeated {
		st.policy.logDecision(req, d, st.monitor)
	}
	switch {
	case st.monitor:
		reply(w, answer{})
	case d.Action == Refuse:
		reply(w, answer{Status: -1, Msg: st.message})
	default:
		reply(w, answer{Status: int(d.Delay / time.Second)})
	}
}

// parseRequest reads Dovecot's JSON: one object, valid UTF-8 (invalid
// UTF-8 once crashed Dovecot's own auth; it must not reach a log or a
// key here), the attributes as strings.
func parseRequest(body []byte) (*Request, string) {
	if !utf8.Valid(body) {
		return nil, "request is not valid UTF-8"
	}
	var req Request
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&req); err != nil {
		return nil, "malformed JSON: " + limit(err.Error())
	}
	if dec.More() {
		return nil, "malformed JSON: more than one value"
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, "malformed JSON: text after the object"
	}
	return &req, ""
}

func limit(s string) string {
	if len(s) > 100 {
		return strings.ToValidUTF8(s[:100], "") + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

func reply(w http.ResponseWriter, a answer) {
	b, _ := json.Marshal(a)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b)
}

// refuse answers a bad request with its status and a clear text, counts
// it, and logs it (at most once per quietEvery, saying how many were not
// logged). Dovecot logs the status and lets the login go on.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, status int, why string) {
	if h.stats != nil {
		h.stats.Hit(Name, "bad request")
	}
	if logIt, quiet := h.bad.allow(time.Now()); logIt {
		h.log.Warn("dovecot policy: bad request", "status", status, "problem", why, "peer", r.RemoteAddr, "not_logged_before", quiet)
	}
	http.Error(w, why, status)
}

// failed logs and counts a backend failure: the answer follows on_error.
func (h *Handler) failed(command string, err error) {
	what := "error"
	if errors.Is(err, context.DeadlineExceeded) {
		what = "timeout"
	}
	if h.stats != nil {
		h.stats.Hit(Name, what)
	}
	if logIt, quiet := h.failure.allow(time.Now()); logIt {
		h.log.Error("dovecot policy: counting failed; answering by on_error", "command", command, "error", err.Error(), "not_logged_before", quiet)
	}
}
