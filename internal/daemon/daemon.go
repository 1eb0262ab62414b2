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
	"sync"
	"syscall"
	"time"

	"github.com/d--j/go-milter"

	"mailguard/internal/config"
	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all"
	"mailguard/internal/listen"
	"mailguard/internal/logging"
	"mailguard/internal/milterdoor"
	"mailguard/internal/pidfile"
	"mailguard/internal/pipeline"
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
	log, closer, err := logging.New(cfg.Log, opts.Stderr)
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
	env := pipeline.Env{Log: log, Stats: counter, Now: time.Now}
	p, err := filters.Build(cfg, env)
	if err != nil {
		return err
	}
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
	for _, w := range cfg.Warnings {
		log.Warn("configuration: " + w)
	}
	log.Info("mailguard started", append([]any{"listen", cfg.Listen.String(), "addr", ln.Addr().String(),
		"filters", p.Filters(), "config", describe(opts.ConfigFile)}, p.Summaries()...)...)

	serveErr := make(chan error, 1)
	go func() { serveErr <- door.Serve(ln) }()
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
		cfg *config.Config
		err error
	}
	reloaded := make(chan outcome, 1)
	reloading, again := false, false
	var seq uint64
	startReload := func() {
		reloading = true
		old := cfg
		go func() {
			c, err := reload(opts.ConfigFile, old, env, door, log)
			reloaded <- outcome{c, err}
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
			if pidPath != "" {
				seq++
				st := pidfile.Status{Seq: seq, OK: o.err == nil, Message: "reloaded"}
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

// reload builds a new pipeline from the files as they are now. A broken
// file keeps the old pipeline running. The listener is not reopened: a new
// listen address needs a restart, and the log says so.
func reload(file string, old *config.Config, env pipeline.Env, door *milterdoor.Door, log *slog.Logger) (*config.Config, error) {
	cfg, err := loadConfig(file)
	if err == nil {
		var p *pipeline.Pipeline
		if p, err = filters.Build(cfg, env); err == nil {
			door.SetPipeline(p)
			if cfg.Listen != old.Listen || cfg.SocketMode != old.SocketMode || cfg.SocketOwner != old.SocketOwner || cfg.SocketGroup != old.SocketGroup || cfg.Log != old.Log || cfg.IdleTimeout != old.IdleTimeout || cfg.MaxConnections != old.MaxConnections {
				log.Warn("reload: changes to listen, socket_mode, idle_timeout, max_connections and [log] take effect after a restart", "listen", old.Listen.String())
			}
			for _, w := range cfg.Warnings {
				log.Warn("configuration: " + w)
			}
			log.Info("reloaded", append([]any{"filters", p.Filters()}, p.Summaries()...)...)
			return cfg, nil
		}
	}
	log.Error("reload failed; still running the previous configuration", "error", err.Error())
	return old, err
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
