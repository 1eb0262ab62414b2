// Package daemon runs `mailguard serve`: it opens the listener, serves the
// milter door, reloads configuration and signatures on SIGHUP, logs the
// periodic summary, and drains sessions on SIGTERM.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/config"
	"mailguard/internal/dovecotpolicy"
	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all"
	"mailguard/internal/listen"
	"mailguard/internal/logging"
	"mailguard/internal/milterdoor"
	"mailguard/internal/pidfile"
	"mailguard/internal/pipeline"
	"mailguard/internal/procscale"
	"mailguard/internal/stats"
)

// Options for Run.
type Options struct {
	// ConfigFile is the configuration; "" runs on built-in defaults.
	ConfigFile string
	// Stderr receives log lines when the configuration logs to stderr.
	Stderr io.Writer
	// Ready, if set, is called with the listening address once serving.
	Ready func(addr string)
	// AllowRoot lets the daemon run as root (serve --allow-root), as the
	// configuration's allow_root does.
	AllowRoot bool
	// HTTPReady, if set, is called with the HTTP listener's address
	// (metrics, status page) once serving; "" when it is off.
	HTTPReady func(addr string)
	// Version is reported by the metrics and the status page.
	Version string
	// ScaleProcessors runs the Go scheduler on one processor while the
	// daemon uses little CPU (procscale). The serve command sets it; a
	// test running daemons in its own process does not, since the
	// setting is the whole process's.
	ScaleProcessors bool
}

// Run serves until ctx ends or SIGTERM/SIGINT arrives, then drains.
func Run(ctx context.Context, opts Options) error {
	// First of all: a SIGHUP or SIGTERM during start-up (reading a large
	// signature file) must not kill the process with the default action.
	// Signals that arrive now wait in the channel for the loop below.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	cfg, err := loadConfig(opts.ConfigFile)
	if err != nil {
		return err
	}
	asRoot, err := rootAllowed(os.Geteuid(), opts, cfg)
	if err != nil {
		return err
	}
	level := new(slog.LevelVar) // log.level changes on reload
	log, closer, err := logging.NewLeveled(cfg.Log, opts.Stderr, level)
	if err != nil {
		return err
	}
	defer closer.Close()
	if asRoot {
		log.Warn("running as root", "why", describeRoot(opts, cfg))
	}
	milter.LogWarning = func(format string, v ...any) {
		log.Warn(fmt.Sprintf("milter protocol: "+format, v...))
	}

	counter := stats.NewCounter()
	obs := newObserver(cfg, opts.Version)
	defer obs.close()
	env := pipeline.Env{Log: log, Stats: counter, Metrics: obs.core, Now: time.Now}
	p, err := filters.Build(cfg, env)
	if err != nil {
		return err
	}
	policy, err := dovecotpolicy.Start(cfg, env)
	if err != nil {
		return err
	}
	defer closePolicy(policy, log, cfg.DrainTimeout)
	ln, err := listen.Listen(cfg.Listen, listen.Socket{Mode: cfg.SocketMode, Owner: cfg.SocketOwner, Group: cfg.SocketGroup})
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	if cfg.PidFile != "" {
		if err := pidfile.Write(cfg.PidFile); err != nil {
			ln.Close()
			return fmt.Errorf("pid_file: %w", err)
		}
		defer pidfile.Remove(cfg.PidFile)
	}
	pidPath := cfg.PidFile // a new pid_file needs a restart
	door := milterdoor.New(p, log, milterdoor.Options{IdleTimeout: cfg.IdleTimeout, MaxConnections: cfg.MaxConnections})
	// At the end, the last pipeline's filters close (Redis clients, clamd
	// sessions) once the drain is over.
	defer func() { door.Pipeline().Retire() }()
	if err := obs.start(cfg, door, log); err != nil {
		ln.Close()
		door.Pipeline().Retire()
		return err
	}
	if opts.HTTPReady != nil {
		opts.HTTPReady(obs.Addr())
	}
	started := cfg // what the listener, the door and the log were set up with
	for _, w := range cfg.Warnings {
		log.Warn("configuration: " + w)
	}
	log.Info("mailguard started", append([]any{"listen", cfg.Listen.String(), "addr", ln.Addr().String(),
		"filters", p.Filters(), "config", describe(opts.ConfigFile)}, p.Summaries()...)...)

	serveErr := make(chan error, 1)
	go func() { serveErr <- door.Serve(ln) }()
	if opts.ScaleProcessors {
		scaleCtx, stopScaling := context.WithCancel(context.Background())
		scaled := make(chan struct{})
		go func() { procscale.Run(scaleCtx, log); close(scaled) }()
		defer func() { stopScaling(); <-scaled }()
	}
	if opts.Ready != nil {
		opts.Ready(ln.Addr().String())
	}

	var wg sync.WaitGroup
	summaryCtx, stopSummary := context.WithCancel(context.Background())
	interval := cfg.Log.SummaryInterval // cfg changes on reload; this needs a restart
	wg.Add(1)
	go func() {
		defer wg.Done()
		summaries(summaryCtx, log, counter, interval)
	}()
	stopSummaries := func() {
		stopSummary()
		wg.Wait()
	}
	defer stopSummaries() // idempotent: stopSummary is a CancelFunc

	// Reloads run beside the loop, so a slow file never keeps a SIGTERM
	// waiting; a SIGHUP during a reload runs another one after it.
	type outcome struct {
		cfg     *config.Config
		pending []string // changes that wait for a restart
		err     error
	}
	reloaded := make(chan outcome, 1)
	reloading, again := false, false
	var seq uint64
	startReload := func() {
		reloading = true
		old := cfg
		go func() {
			c, pending, err := reload(opts.ConfigFile, old, started, env, door, policy, level, log)
			reloaded <- outcome{c, pending, err}
		}()
	}
	for {
		select {
		case err := <-serveErr:
			// The listener failed for good: finish what is in flight.
			log.Error("listener failed; stopping", "error", err.Error())
			drain(door, log, cfg.DrainTimeout, nil, stopSummaries)
			return err
		case <-ctx.Done():
			return drain(door, log, cfg.DrainTimeout, serveErr, stopSummaries)
		case s := <-sigs:
			if s != syscall.SIGHUP {
				log.Info("stopping", "signal", s.String(), "drain_timeout", cfg.DrainTimeout.String(), "open", door.Active())
				return drain(door, log, cfg.DrainTimeout, serveErr, stopSummaries)
			}
			if reloading {
				again = true
				continue
			}
			startReload()
		case o := <-reloaded:
			cfg, reloading = o.cfg, false
			obs.reloaded(cfg, door.Pipeline(), o.err, o.pending)
			if pidPath != "" {
				seq++
				st := pidfile.Status{Seq: seq, OK: o.err == nil, Message: "reloaded"}
				if len(o.pending) > 0 {
					st.Message = "reloaded; these changes wait for a restart: " + strings.Join(o.pending, "; ")
				}
				if o.err != nil {
					st.Message = o.err.Error()
				}
				if err := pidfile.WriteStatus(pidPath, st); err != nil {
					log.Error("cannot record the reload's outcome beside pid_file", "error", err.Error())
				}
			}
			if again {
				again = false
				startReload()
			}
		}
	}
}

// reload builds a new pipeline from the files as they are now, its
// filters taking over what their predecessors hold (counters, caches,
// pools) where their settings did not change, and the Dovecot policy
// door's new rules. A broken file keeps the old pipeline and rules
// running. The old pipeline serves its open connections to their end and
// is then closed. The listener, the door's limits and the log's target
// were set up at start (started) and are not reopened: changes to them
// are returned, to be told to the postmaster, and wait for a restart. The
// log level changes at once.
func reload(file string, old, started *config.Config, env pipeline.Env, door *milterdoor.Door, policy *dovecotpolicy.Service, level *slog.LevelVar, log *slog.Logger) (*config.Config, []string, error) {
	cfg, err := loadConfig(file)
	if err == nil {
		var p *pipeline.Pipeline
		var next *dovecotpolicy.Next
		if p, err = filters.BuildWith(cfg, env, filters.BuildOptions{Predecessor: door.Pipeline()}); err == nil {
			if next, err = policy.Prepare(cfg); err != nil {
				p.Close() // never served: what it took over stays with the running one
			}
		}
		if err == nil {
			door.SetPipeline(p).Retire()
			policy.Commit(next)
			if policy == nil && dovecotpolicy.Section(cfg).Listen != "" {
				log.Warn("reload: the [dovecot_policy] door opens after a restart")
			}
			if l, err := logging.ParseLevel(cfg.Log.Level); err == nil && l != level.Level() {
				level.Set(l)
				log.Info("reload: log level changed", "level", cfg.Log.Level)
			}
			pending := restartNeeded(started, cfg)
			if len(pending) > 0 {
				log.Warn("reload: these changes take effect after a restart", "changes", pending)
			}
			for _, w := range cfg.Warnings {
				log.Warn("configuration: " + w)
			}
			log.Info("reloaded", append([]any{"filters", p.Filters()}, p.Summaries()...)...)
			return cfg, pending, nil
		}
	}
	log.Error("reload failed; still running the previous configuration", "error", err.Error())
	return old, nil, err
}

// restartNeeded lists the settings that differ between what the daemon
// was started with and cfg, but are only read at start: "listen
// inet:127.0.0.1:8897 -> unix:/run/mg.sock".
func restartNeeded(started, cfg *config.Config) []string {
	var out []string
	diff := func(key string, was, now any) {
		if a, b := fmt.Sprint(was), fmt.Sprint(now); a != b {
			out = append(out, fmt.Sprintf("%s %s -> %s", key, a, b))
		}
	}
	diff("listen", started.Listen.String(), cfg.Listen.String())
	diff("socket_mode", fmt.Sprintf("%04o", started.SocketMode), fmt.Sprintf("%04o", cfg.SocketMode))
	diff("socket_owner", started.SocketOwner, cfg.SocketOwner)
	diff("socket_group", started.SocketGroup, cfg.SocketGroup)
	diff("pid_file", quoted(started.PidFile), quoted(cfg.PidFile))
	diff("idle_timeout", started.IdleTimeout, cfg.IdleTimeout)
	diff("max_connections", started.MaxConnections, cfg.MaxConnections)
	diff("log.target", started.Log.Target, cfg.Log.Target)
	diff("log.format", started.Log.Format, cfg.Log.Format)
	diff("log.syslog_tag", started.Log.SyslogTag, cfg.Log.SyslogTag)
	diff("log.summary_interval", started.Log.SummaryInterval, cfg.Log.SummaryInterval)
	diff("http", fmt.Sprintf("%q %q %q", started.HTTP.Listen, started.HTTP.User, started.HTTP.PasswordFile), fmt.Sprintf("%q %q %q", cfg.HTTP.Listen, cfg.HTTP.User, cfg.HTTP.PasswordFile))
	return out
}

func quoted(s string) string { return fmt.Sprintf("%q", s) }

// closePolicy closes the Dovecot policy door (nil: none) after the
// milter door has drained.
func closePolicy(policy *dovecotpolicy.Service, log *slog.Logger, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := policy.Close(ctx); err != nil {
		log.Warn("dovecot policy door: closing", "error", err.Error())
	}
}

// drain stops the door, then the summaries (whose last line counts the
// messages that finished during the drain), and says it stopped.
func drain(door *milterdoor.Door, log *slog.Logger, timeout time.Duration, serveErr <-chan error, stopSummaries func()) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	switch err := door.Shutdown(ctx); {
	case errors.Is(err, milterdoor.ErrSessionsLeft):
		log.Error("drain timeout: sessions did not end after their filter calls were cancelled; stopping anyway", "error", err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		log.Warn("drain timeout: closed the sessions still in flight and cancelled their filter calls", "error", err.Error())
	case err != nil:
		return err
	}
	if serveErr != nil {
		<-serveErr
	}
	stopSummaries()
	log.Info("stopped")
	return nil
}

// summaries logs the counts every interval, and once more when the daemon
// stops, so the last minutes before a restart are not lost.
func summaries(ctx context.Context, log *slog.Logger, c *stats.Counter, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			s := c.Take()
			log.Info("summary", append([]any{"interval", time.Since(last).Round(time.Second).String(), "final", true}, s.Attrs()...)...)
			return
		case now := <-t.C:
			s := c.Take()
			log.Info("summary", append([]any{"interval", every.String()}, s.Attrs()...)...)
			last = now
		}
	}
}

// ErrRoot is serve's refusal to run as root.
var ErrRoot = errors.New("refusing to run as root: a flaw in a filter that reads hostile mail would hand over the whole host.\n" +
	"Run mailguard as a user of its own, a member of the group that owns the MTA's socket (socket_group):\n" +
	"  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mailguard\n" +
	"  runuser -u mailguard -- mailguard serve --config FILE\n" +
	"The systemd unit (dist/mailguard.service) and the Debian package do this. To run as root anyway,\n" +
	"set allow_root = true in the configuration or pass --allow-root")

// rootAllowed refuses root unless the configuration or the command line
// allows it. The built-in defaults (a loopback address, the bundled
// signatures: a trial, such as the README's first command) run as root
// too, with a warning. It tells whether the daemon runs as root.
func rootAllowed(euid int, opts Options, cfg *config.Config) (bool, error) {
	if euid != 0 {
		return false, nil
	}
	if opts.AllowRoot || cfg.AllowRoot || opts.ConfigFile == "" {
		return true, nil
	}
	return true, ErrRoot
}

func describeRoot(opts Options, cfg *config.Config) string {
	switch {
	case opts.AllowRoot:
		return "--allow-root"
	case cfg.AllowRoot:
		return "allow_root = true"
	}
	return "built-in defaults on a loopback address; with a configuration file, root needs allow_root = true or --allow-root"
}

func loadConfig(file string) (*config.Config, error) {
	if file == "" {
		return filters.Default(), nil
	}
	return filters.Load(file)
}

func describe(file string) string {
	if file == "" {
		return "(built-in defaults)"
	}
	return file
}
