package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mailguard/internal/filter/senders"
	"mailguard/internal/filters"
	"mailguard/internal/hashlist"
	"mailguard/internal/sigfile"
	"mailguard/internal/userdir"
)

// TestReadmeExamples parses every ```toml and ```signatures block of the
// README, so the documentation cannot drift from what mailguard accepts.
func TestReadmeExamples(t *testing.T) {
	docs, _ := filepath.Glob("../../internal/filter/*/README.md")
	blocks := map[string]int{}
	for _, doc := range append([]string{"../../README.md"}, docs...) {
		checkExamples(t, doc, blocks)
	}
}

func checkExamples(t *testing.T, doc string, blocks map[string]int) {
	t.Helper()
	readme, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(readme), "\n")
	for i := 0; i < len(lines); i++ {
		lang, ok := strings.CutPrefix(lines[i], "```")
		if !ok || (lang != "toml" && lang != "signatures" && lang != "users" && lang != "blocklist" && lang != "hashes") {
			continue
		}
		start := i + 1
		for i++; i < len(lines) && lines[i] != "```"; i++ {
		}
		text := strings.Join(lines[start:i], "\n") + "\n"
		name := fmt.Sprintf("%s block at line %d", strings.TrimPrefix(doc, "../../"), start)
		blocks[lang]++
		switch lang {
		case "toml":
			if _, err := filters.Parse(name, []byte(text)); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case "signatures":
			if _, err := sigfile.Parse(name, strings.NewReader(text)); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case "blocklist":
			if _, err := senders.Parse(name, strings.NewReader(text), "+"); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case "hashes":
			var l hashlist.List
			if err := l.Read(name, strings.NewReader(text)); err != nil || l.Len() == 0 {
				t.Errorf("%s: %v (%d hashes)", name, err, l.Len())
			}
		case "users":
			if _, err := userdir.Parse(name, strings.NewReader(text), userdir.Options{Delimiter: "+"}); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
}
