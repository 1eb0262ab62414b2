package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"mailguard/internal/config"
	"mailguard/internal/filters"
	"mailguard/internal/metrics"
	"mailguard/internal/milterdoor"
	"mailguard/internal/pipeline"
	"mailguard/internal/safefile"
	"mailguard/internal/webstatus"
)

// observer owns the daemon's metrics registry and its HTTP listener
// (metrics, the status page, /status.json). It is made once per daemon:
// a reload hands the same Core to the new pipeline, so nothing is
// registered twice.
type observer struct {
	reg     *prometheus.Registry
	core    *metrics.Core
	src     *webstatus.Source
	srv     *webstatus.Server
	reloads *prometheus.CounterVec
	loaded  prometheus.Gauge
	ok      prometheus.Gauge
}

// newObserver makes the registry; with http.listen "" nobody can read
// the metrics, so the pipeline gets none (its Core is nil) and pays
// nothing for them.
func newObserver(cfg *config.Config, version string) *observer {
	reg := prometheus.NewRegistry()
	o := &observer{reg: reg,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "reloads_total",
			Help: "Reloads (SIGHUP), by result: ok or failed (the previous configuration kept running)."}, []string{"result"}),
		loaded: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "config_loaded_timestamp_seconds",
			Help: "When the configuration now running was loaded (Unix time)."}),
		ok: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "config_last_reload_success",
			Help: "1 if the latest load or reload of the configuration worked, 0 if it failed."}),
	}
	if cfg.HTTP.Listen != "" {
		o.core = metrics.NewCore(reg, time.Now)
	}
	o.reloads.WithLabelValues("ok")
	o.reloads.WithLabelValues("failed")
	reg.MustRegister(o.reloads, o.loaded, o.ok, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "build_info",
			Help: "Always 1; the version is a label.", ConstLabels: prometheus.Labels{"version": version}}, func() float64 { return 1 }))
	o.src = &webstatus.Source{Gatherer: reg, Core: o.core, Started: time.Now(), Version: version}
	return o
}

// start registers what needs the door (sessions in flight, the filters'
// own metrics, read from the pipeline serving at each scrape) and opens
// the listener, unless http.listen is "".
func (o *observer) start(cfg *config.Config, door *milterdoor.Door, log *slog.Logger) error {
	o.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "sessions_in_flight",
		Help: "Milter connections open now (one per SMTP session)."}, func() float64 { return float64(door.Active()) }))
	if err := filters.RegisterCollectors(o.reg, door.Pipeline); err != nil {
		return err
	}
	o.configLoaded(cfg, door.Pipeline(), nil, "")
	if cfg.HTTP.Listen == "" {
		return nil
	}
	var auth webstatus.Auth
	if cfg.HTTP.User != "" {
		data, err := safefile.ReadFile(cfg.HTTP.PasswordFile, 4096)
		if err != nil {
			return fmt.Errorf("http.password_file: %w", err)
		}
		pw, _, _ := strings.Cut(string(data), "\n")
		if pw = strings.TrimRight(pw, "\r"); pw == "" {
			return fmt.Errorf("http.password_file %s: the first line (the password) is empty", cfg.HTTP.PasswordFile)
		}
		auth = webstatus.Auth{User: cfg.HTTP.User, Password: pw}
	}
	srv, err := webstatus.Start(cfg.HTTP.Listen, webstatus.Handler(o.src, auth, log), log)
	if err != nil && cfg.Line("http.listen") == 0 && errors.Is(err, syscall.EADDRINUSE) {
		// The default address, taken (by a second instance, say): mail
		// matters more than metrics. An address the file names must work.
		log.Warn("http listener not started: its default address is taken; set http.listen (\"\" for none)", "addr", cfg.HTTP.Listen, "error", err.Error())
		return nil
	}
	if err != nil {
		return fmt.Errorf("http.listen %s: %w", cfg.HTTP.Listen, err)
	}
	o.srv = srv
	log.Info("http listener: metrics, status page", "addr", "http://"+srv.Addr()+"/", "basic_auth", auth.User != "")
	return nil
}

// configLoaded records a load (err nil) or a failed reload.
func (o *observer) configLoaded(cfg *config.Config, p *pipeline.Pipeline, err error, note string) {
	st := webstatus.ConfigState{File: cfg.File, LoadedAt: time.Now(), OK: err == nil, Message: note, Filters: p.Filters()}
	if err != nil {
		st.Message = "still running the previous configuration: " + err.Error()
		o.ok.Set(0)
	} else {
		o.ok.Set(1)
		o.loaded.SetToCurrentTime()
	}
	o.src.SetConfig(st)
}

// reloaded counts a reload's result.
func (o *observer) reloaded(cfg *config.Config, p *pipeline.Pipeline, err error, pending []string) {
	result := "ok"
	if err != nil {
		result = "failed"
	}
	o.reloads.WithLabelValues(result).Inc()
	note := ""
	if len(pending) > 0 {
		note = "these changes wait for a restart: " + strings.Join(pending, "; ")
	}
	o.configLoaded(cfg, p, err, note)
}

// Addr is the listener's address, "" when it is off.
func (o *observer) Addr() string {
	if o.srv == nil {
		return ""
	}
	return o.srv.Addr()
}

func (o *observer) close() {
	if o.srv != nil {
		o.srv.Close()
	}
}
