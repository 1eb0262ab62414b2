package dovecotpolicy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/netutil"

	"mailguard/internal/config"
	"mailguard/internal/listen"
	"mailguard/internal/pipeline"
	"mailguard/internal/ratecount"
)

// Service is the running door: its listener, its handler, and the
// counter it owns (kept across reloads while the backend stays the same,
// so counts survive a SIGHUP).
type Service struct {
	log     *slog.Logger
	env     pipeline.Env
	server  *http.Server
	handler *Handler
	addr    net.Addr
	listen  string
	served  chan error

	mu      sync.Mutex
	backend string
	counter ratecount.Counter
}

// Next is a checked configuration, ready to replace the running one.
type Next struct {
	cfg     *Config
	counter ratecount.Counter
	backend string
	fresh   bool // the counter is new: the service now owns it
	policy  *Policy
}

// Section returns the configuration's [dovecot_policy].
func Section(cfg *config.Config) *Config {
	if c, ok := cfg.Sections[Name].(*Config); ok {
		return c
	}
	return defaults()
}

// Start opens the door when the configuration has one (listen is set);
// otherwise it returns nil, which every method accepts.
func Start(cfg *config.Config, env pipeline.Env) (*Service, error) {
	c := Section(cfg)
	if c.Listen == "" {
		return nil, nil
	}
	s := &Service{log: env.Log, env: env, listen: c.Listen, served: make(chan error, 1)}
	next, err := s.Prepare(cfg)
	if err != nil {
		return nil, err
	}
	addr, _ := listen.Parse(c.Listen) // checked
	ln, err := listen.Listen(addr, listen.Socket{Mode: cfg.SocketMode, Owner: cfg.SocketOwner, Group: cfg.SocketGroup})
	if err != nil {
		next.discard()
		return nil, fmt.Errorf("[%s] listen on %s: %w", Name, c.Listen, err)
	}
	s.addr = ln.Addr()
	s.handler = NewHandler(next.policy, c, env.Log, env)
	s.commit(next)
	s.server = newServer(s.handler, env.Log, readTimeout)
	go func() { s.served <- s.server.Serve(netutil.LimitListener(ln, MaxConnections)) }()
	env.Log.Info("dovecot policy door open", "listen", c.Listen, "addr", s.addr.String(), "rules", len(next.policy.opts.Rules), "backend", next.backend)
	return s, nil
}

// newServer bounds what a client may hold: the time to send a request
// (read), headers, idle kept-alive connections.
func newServer(h http.Handler, log *slog.Logger, read time.Duration) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: read,
		ReadTimeout:       read,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// Addr is where the door listens.
func (s *Service) Addr() string {
	if s == nil {
		return ""
	}
	return s.addr.String()
}

// Prepare builds the policy a configuration describes, reusing the
// running counter when the backend did not change. Nothing changes
// until Commit.
func (s *Service) Prepare(cfg *config.Config) (*Next, error) {
	if s == nil {
		return nil, nil
	}
	c := Section(cfg)
	n := &Next{cfg: c, backend: c.Backend}
	s.mu.Lock()
	if s.counter != nil && s.backend == c.Backend {
		n.counter = s.counter
	}
	s.mu.Unlock()
	if n.counter == nil {
		n.fresh = true
		if c.Backend == "memory" {
			n.counter = ratecount.NewMemory(s.env.Now)
		} else {
			rc, err := ratecount.NewRedis(c.Backend, s.env.Now)
			if err != nil {
				return nil, &config.Error{File: cfg.File, Line: cfg.Line(Name + ".backend"), Msg: Name + ".backend: " + err.Error()}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := rc.Ping(ctx); err != nil {
				s.log.Warn("dovecot policy: Redis does not answer; until it does, logins follow on_error", "backend", rc.Addr(), "on_error", c.OnError, "error", err.Error())
			}
			cancel()
			n.counter = rc
		}
	}
	var rules []Rule
	for _, rc := range c.Rules {
		r, _ := rc.parse() // checked
		rules = append(rules, r)
	}
	exempt, _ := parseExempt(c.Exempt) // checked
	n.policy = New(Options{Rules: rules, Counter: n.counter, Backend: c.Backend, Exempt: exempt,
		RememberSuccess: c.RememberSuccess.Duration, Monitor: c.Mode == "monitor", RejectOnError: c.OnError == "reject",
		Message: c.Message, Timeout: c.Timeout.Duration, Log: s.env.Log, Stats: s.env})
	return n, nil
}

// discard closes what Prepare opened when it is not used.
func (n *Next) discard() {
	if n != nil && n.fresh {
		closeCounter(n.counter)
	}
}

func closeCounter(c ratecount.Counter) {
	if r, ok := c.(*ratecount.Redis); ok {
		r.Close()
	}
}

// closeGrace lets requests that still hold a replaced Redis client end
// before it is closed.
const closeGrace = 5 * time.Second

// Commit makes a prepared configuration the running one. A new listen
// address needs a restart, and the log says so.
func (s *Service) Commit(n *Next) {
	if s == nil || n == nil {
		return
	}
	if n.cfg.Listen != s.listen {
		s.log.Warn("reload: a new [dovecot_policy] listen takes effect after a restart", "listen", s.listen)
	}
	s.commit(n)
	s.log.Info("dovecot policy door reloaded", "rules", len(n.policy.opts.Rules), "backend", n.backend)
}

func (s *Service) commit(n *Next) {
	s.handler.set(n.policy, n.cfg)
	s.mu.Lock()
	old := s.counter
	s.counter, s.backend = n.counter, n.backend
	s.mu.Unlock()
	if old != nil && old != n.counter {
		time.AfterFunc(closeGrace, func() { closeCounter(old) })
	}
}

// Close stops the door: requests in flight get until ctx ends.
func (s *Service) Close(ctx context.Context) error {
	if s == nil {
		return nil
	}
	err := s.server.Shutdown(ctx)
	if serr := <-s.served; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	s.mu.Lock()
	closeCounter(s.counter)
	s.mu.Unlock()
	return err
}
