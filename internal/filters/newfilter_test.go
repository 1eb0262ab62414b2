package filters_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"mailguard/internal/config"
	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all"
	"mailguard/internal/pipeline"
	"mailguard/internal/verdict"
)

// This file is everything a new filter takes: its section with defaults,
// its checks, its constructor, its example, and one line registering it.
// (A real filter lives in its own folder, and its import is the one line
// in package filters/all.)

func init() { filters.Register("helocheck", heloDefaults, heloBuild, heloExample) }

type heloConfig struct {
	config.Common
	Refuse []string `toml:"refuse"`
}

func heloDefaults() *heloConfig {
	return &heloConfig{Common: config.NewCommon("accept"), Refuse: []string{}}
}

func (c *heloConfig) Validate(v *config.Checker, enabled bool) {
	for _, name := range c.Refuse {
		if strings.TrimSpace(name) == "" {
			v.Fail("refuse", "an empty HELO name")
		}
	}
}

const heloExample = `[helocheck]
# HELO names to refuse.
refuse = []
mode = "enforce"
on_error = "accept"
timeout = "10s"
`

type heloFilter struct{ refuse []string }

func heloBuild(c *heloConfig, _ *filters.Env) (pipeline.Filter, error) {
	return &heloFilter{refuse: c.Refuse}, nil
}

func (f *heloFilter) Name() string                            { return "helocheck" }
func (f *heloFilter) Stages() (reads, decides pipeline.Stage) { return 0, pipeline.StageHelo }
func (f *heloFilter) NewCheck(context.Context, *pipeline.Envelope) (pipeline.Check, error) {
	return pipeline.NopCheck{}, nil
}
func (f *heloFilter) NewConnState(context.Context, *pipeline.Conn) (pipeline.ConnState, error) {
	return heloState{f}, nil
}

type heloState struct {
	*heloFilter
}

func (s heloState) Connect(context.Context, *pipeline.Conn) (verdict.Verdict, error) {
	return verdict.Pass, nil
}
func (s heloState) Helo(_ context.Context, c *pipeline.Conn) (verdict.Verdict, error) {
	if slices.Contains(s.refuse, c.Helo) {
		return verdict.Rejectf(verdict.CodeMailboxUnavailable, verdict.EnhDeliveryNotAuthorized, "Bad HELO"), nil
	}
	return verdict.Pass, nil
}
func (s heloState) Close() {}

func TestNewFilterIsOneFolderAndOneLine(t *testing.T) {
	if !strings.Contains(filters.ExampleConfig(), "\n[helocheck]\n") {
		t.Error("the example configuration lacks the new filter's section")
	}
	_, err := filters.Parse("m.toml", []byte("filters = [\"helocheck\"]\n[helocheck]\nrefuse = [\" \"]\ncolour = 1\ntimeout = \"soon\"\n"))
	for _, want := range []string{`m.toml:3: helocheck.refuse: an empty HELO name`, `m.toml:4: unknown key "helocheck.colour"`, `m.toml:5: helocheck.timeout: "soon" is not a positive duration`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in %v", want, err)
		}
	}
	c, err := filters.Parse("m.toml", []byte("filters = [\"helocheck\", \"virus\"]\n[helocheck]\nrefuse = [\"bad.example\"]\nmode = \"monitor\"\ntimeout = \"3s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := filters.Build(c, pipeline.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Filters(); !slices.Equal(got, []string{"helocheck", "virus"}) {
		t.Fatalf("filters %v", got)
	}
	// In monitor mode, as configured, the bad HELO is only recorded.
	cn := p.Open(context.Background(), &pipeline.Conn{Helo: "bad.example"})
	defer cn.Close()
	if v := cn.Helo(); v.Final() {
		t.Fatalf("monitor mode refused: %v", v)
	}
	m, _ := cn.Begin(pipeline.AllStages, pipeline.AllModifications, "a@example.org", "")
	m.End()
	if hits := m.Envelope().Monitored(); len(hits) != 1 || hits[0].Filter != "helocheck" {
		t.Fatalf("monitor record %+v", hits)
	}
	m.Close()
}

// A filter that answers at RCPT (quota) cannot wait longer than the MTA
// waits for that answer.
func TestTimeoutWithinTheMTAsCommandTimeout(t *testing.T) {
	users := filepath.Join(t.TempDir(), "users")
	os.WriteFile(users, nil, 0o644)
	c, err := filters.Parse("m.toml", []byte("filters = [\"quota\", \"virus\"]\n[quota]\nusers = \""+users+"\"\ntimeout = \"45s\"\n[virus]\ntimeout = \"45s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = filters.Build(c, pipeline.Env{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now})
	if err == nil || !strings.Contains(err.Error(), "m.toml:4: quota.timeout: 45s is too long") || strings.Contains(err.Error(), "virus.timeout") {
		t.Fatalf("err = %v", err)
	}
}
