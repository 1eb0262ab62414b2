// Package filterstest checks what every filter's folder keeps true, from
// the filter's own tests: its example section is its defaults, and its
// README documents every key with the default the example gives.
package filterstest

import (
	"mailguard/internal/logging"
	"mailguard/internal/pipeline"
	"mailguard/internal/scan"
	"mailguard/internal/stats"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"mailguard/internal/config"
	"mailguard/internal/filters"
	_ "mailguard/internal/filters/all" // README examples may name any filter
)

// CheckDocs checks the registered filter name against README.md in the
// test's directory (the filter's folder).
func CheckDocs(t *testing.T, name string) {
	t.Helper()
	spec, ok := filters.Lookup(name)
	if !ok {
		t.Fatalf("filter %q is not registered", name)
	}
	c, err := filters.Parse("example.toml", []byte(spec.Example))
	if err != nil {
		t.Fatalf("example.toml: %v", err)
	}
	if got, want := c.Sections[name], spec.NewSection(); !reflect.DeepEqual(got, want) {
		t.Errorf("example.toml differs from the defaults:\n got %+v\nwant %+v", got, want)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{} // key -> its table row
	for _, line := range strings.Split(string(readme), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(line, "| `") {
			continue
		}
		for _, k := range regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(cells[1], -1) {
			rows[k[1]] = cells[2]
		}
	}
	values := exampleValues(spec.Example)
	for _, key := range keys(reflect.TypeOf(spec.NewSection()).Elem()) {
		row, ok := rows[key]
		if !ok {
			t.Errorf("README.md: no table row for `%s`", key)
			continue
		}
		if !strings.Contains(spec.Example, "\n"+key+" =") && !strings.Contains(spec.Example, "# "+key+" =") {
			t.Errorf("example.toml does not show %s", key)
		}
		if v, ok := values[key]; ok && !strings.Contains(row, v) {
			t.Errorf("README.md gives `%s` the default %q; example.toml says %s", key, strings.TrimSpace(row), v)
		}
	}
	for i, block := range tomlBlocks(string(readme)) {
		if _, err := filters.Parse("README.md toml block "+string(rune('1'+i)), []byte(block)); err != nil {
			t.Errorf("README.md: %v", err)
		}
	}
}

// keys lists the toml keys of a section type, its common keys included.
func keys(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Anonymous && f.Type == reflect.TypeOf(config.Common{}) {
			out = append(out, keys(f.Type)...)
			continue
		}
		if k, _, _ := strings.Cut(f.Tag.Get("toml"), ","); k != "" && k != "-" {
			out = append(out, k)
		}
	}
	return out
}

// exampleValues maps the keys an example sets to their values as written.
func exampleValues(example string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(example, "\n") {
		if k, v, ok := strings.Cut(line, " = "); ok && !strings.HasPrefix(k, "#") {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

func tomlBlocks(md string) []string {
	var out []string
	for _, part := range strings.Split(md, "```toml\n")[1:] {
		block, _, _ := strings.Cut(part, "```")
		out = append(out, block)
	}
	return out
}

// Build makes a pipeline from configuration text, as the daemon would:
// in dir when it is not "" (the file's relative paths are relative to
// it), with env's clock and a log that discards; the counter it returns
// holds what the filters counted.
func Build(t testing.TB, dir, text string, env pipeline.Env) (*pipeline.Pipeline, *stats.Counter) {
	t.Helper()
	var (
		cfg *config.Config
		err error
	)
	if dir == "" {
		cfg, err = filters.Parse("test.toml", []byte(text))
	} else {
		file := filepath.Join(dir, "mailguard.toml")
		if err = os.WriteFile(file, []byte(text), 0o644); err == nil {
			cfg, err = filters.Load(file)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if env.Log == nil {
		env.Log = logging.Discard()
	}
	if env.Stats == nil {
		env.Stats = stats.NewCounter()
	}
	p, err := filters.Build(cfg, env)
	if err != nil {
		t.Fatal(err)
	}
	return p, env.Stats
}

// Scan runs one message through the pipeline as mailguard scan does.
func Scan(t testing.TB, p *pipeline.Pipeline, msg string) scan.Outcome {
	t.Helper()
	out, err := scan.Message(p, strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	return out
}
