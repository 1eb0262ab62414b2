package filters_test

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"mailguard/internal/config"
	"mailguard/internal/filters"
	"mailguard/internal/pipeline"
)

// keeper is a filter with a long-lived part: it records its predecessor
// and counts its closes.
func init() {
	filters.Register("keeper", func() *keeperConfig { return &keeperConfig{Common: config.NewCommon("accept")} }, keeperBuild, "[keeper]\n")
}

type keeperConfig struct{ config.Common }

func (c *keeperConfig) Validate(*config.Checker, bool) {}

type keeper struct {
	predecessor pipeline.Filter
	offline     bool
	closes      atomic.Int64
}

var lastKeeper atomic.Pointer[keeper]

func keeperBuild(_ *keeperConfig, b *filters.Env) (pipeline.Filter, error) {
	k := &keeper{predecessor: b.Predecessor(), offline: b.Offline()}
	lastKeeper.Store(k)
	return k, nil
}

func (k *keeper) Name() string                            { return "keeper" }
func (k *keeper) Stages() (reads, decides pipeline.Stage) { return 0, 0 }
func (k *keeper) NewCheck(context.Context, *pipeline.Envelope) (pipeline.Check, error) {
	return nil, nil
}
func (k *keeper) Close() error { k.closes.Add(1); return nil }

func buildWith(t *testing.T, text string, opts filters.BuildOptions) (*pipeline.Pipeline, error) {
	t.Helper()
	c, err := filters.Parse("m.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return filters.BuildWith(c, pipeline.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now}, opts)
}

// A filter built for a reload sees its predecessor; one built for a scan
// or check-config does not (it must not share the daemon's parts). A
// build that fails closes what it built, so parts taken from the
// predecessor are let go.
func TestPredecessorAndFailedBuild(t *testing.T) {
	p1, err := buildWith(t, "filters = [\"keeper\"]\n", filters.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	k1 := lastKeeper.Load()
	if k1.predecessor != nil {
		t.Fatal("a first build has a predecessor")
	}
	if _, err := buildWith(t, "filters = [\"keeper\", \"virus\"]\n[virus]\nsignatures = \"/nonexistent/signatures\"\n", filters.BuildOptions{Predecessor: p1}); err == nil {
		t.Fatal("a missing signature file built")
	}
	if k2 := lastKeeper.Load(); k2.predecessor != k1 || k2.closes.Load() != 1 || k1.closes.Load() != 0 {
		t.Fatalf("failed build: predecessor %v, closes new %d old %d", k2.predecessor, k2.closes.Load(), k1.closes.Load())
	}
	p3, err := buildWith(t, "filters = [\"keeper\"]\n", filters.BuildOptions{Predecessor: p1})
	if err != nil || lastKeeper.Load().predecessor != k1 {
		t.Fatalf("reload: %v", err)
	}
	p1.Retire()
	if k1.closes.Load() != 1 {
		t.Fatal("the retired pipeline's filter was not closed")
	}
	if _, err := buildWith(t, "filters = [\"keeper\"]\n", filters.BuildOptions{Predecessor: p3, Offline: true}); err != nil || lastKeeper.Load().predecessor != nil || !lastKeeper.Load().offline {
		t.Fatalf("a scan's build got the daemon's filter: %v", err)
	}
	c, _ := filters.Parse("m.toml", []byte("filters = [\"keeper\"]\n"))
	if err := filters.Check(c, pipeline.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}); err != nil || lastKeeper.Load().closes.Load() != 1 {
		t.Fatalf("check-config's build not closed: %v", err)
	}
}
