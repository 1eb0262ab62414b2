// Package metrics is mailguard's Prometheus instrumentation and the
// in-memory record the status page draws: the pipeline's own metrics
// (messages, verdicts, hits, failures, latencies), a minute-by-minute
// history of the last day and the most recent decisions. The daemon makes
// one Core and registers it once; a reload hands the same Core to the new
// pipeline, so nothing is registered twice and no counter restarts.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Namespace starts every metric's name.
const Namespace = "mailguard"

// Core is what the pipeline reports to. A nil *Core is valid and does
// nothing, for pipelines built without metrics (scan, check-config).
type Core struct {
	messages  prometheus.Counter
	verdicts  *prometheus.CounterVec
	hits      *prometheus.CounterVec
	failures  *prometheus.CounterVec
	calls     *prometheus.HistogramVec
	stages    *prometheus.HistogramVec
	Activity  *Activity
	stageObsv map[string]prometheus.Observer
}

// latencyBuckets run from 50 µs (a signature search of a small body) to
// 30 s (Postfix's milter_command_timeout).
var latencyBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// Stages are the names the pipeline times its stages by.
var Stages = []string{"connection", "connect", "helo", "start", "mail", "rcpt", "header", "eoh", "body", "eom"}

// NewCore makes the pipeline's metrics and registers them on reg.
func NewCore(reg prometheus.Registerer, now func() time.Time) *Core {
	c := &Core{
		messages: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "messages_total",
			Help: "Messages begun (MAIL FROM)."}),
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "verdicts_total",
			Help: "What became of each message: outcome (accepted, rejected, tempfailed, discarded, aborted) and the filter that decided it; the summary line's verdicts."},
			[]string{"outcome", "filter"}),
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "hits_total",
			Help: "Events per filter and reason (a signature, a rule, a failure class): the summary line's hits, same keys."},
			[]string{"filter", "reason"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "filter_failures_total",
			Help: "Filter calls that failed: reason error, timeout, panic, or cancelled (the MTA went away)."},
			[]string{"filter", "reason"}),
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "filter_call_duration_seconds",
			Help: "Time of one filter call, per filter and stage.", Buckets: latencyBuckets},
			[]string{"filter", "stage"}),
		stages: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "stage_duration_seconds",
			Help: "Time the pipeline took to answer one stage, every filter together.", Buckets: latencyBuckets},
			[]string{"stage"}),
		Activity: NewActivity(now),
	}
	reg.MustRegister(c.messages, c.verdicts, c.hits, c.failures, c.calls, c.stages)
	c.stageObsv = map[string]prometheus.Observer{}
	for _, s := range Stages {
		if s != "connection" && s != "start" { // parts of connect and mail
			c.stageObsv[s] = c.stages.WithLabelValues(s)
		}
	}
	return c
}

// Message counts one message begun.
func (c *Core) Message() {
	if c == nil {
		return
	}
	c.messages.Inc()
	c.Activity.message()
}

// Verdict counts what became of one message.
func (c *Core) Verdict(outcome, filter string) {
	if c != nil {
		c.verdicts.WithLabelValues(outcome, filter).Inc()
	}
}

// Hit counts one event, keyed as the summary's hits.
func (c *Core) Hit(filter, reason string) {
	if c != nil {
		c.hits.WithLabelValues(filter, reason).Inc()
	}
}

// Failure counts a failed filter call.
func (c *Core) Failure(filter, reason string) {
	if c != nil {
		c.failures.WithLabelValues(filter, reason).Inc()
	}
}

// Decision records a decision for the status page.
func (c *Core) Decision(d Decision) {
	if c != nil {
		c.Activity.decision(d)
	}
}

// CallTimer is the histogram of filter's calls at stage; nil for a nil
// Core. The pipeline looks it up once per filter and stage when it is
// built, not per call.
func (c *Core) CallTimer(filter, stage string) prometheus.Observer {
	if c == nil {
		return nil
	}
	return c.calls.WithLabelValues(filter, stage)
}

// StageTimer is the histogram of a whole stage; nil for a nil Core or an
// unknown stage.
func (c *Core) StageTimer(stage string) prometheus.Observer {
	if c == nil {
		return nil
	}
	return c.stageObsv[stage]
}
