package main

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"mailguard/internal/filter/senders"
	"mailguard/internal/filters"
	"mailguard/internal/sigfile"
	"mailguard/internal/userdir"
)

// TestReadmeExamples parses every ```toml and ```signatures block of the
// README, so the documentation cannot drift from what mailguard accepts.
func TestReadmeExamples(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[string]int{}
	lines := strings.Split(string(readme), "\n")
	for i := 0; i < len(lines); i++ {
		lang, ok := strings.CutPrefix(lines[i], "```")
		if !ok || (lang != "toml" && lang != "signatures" && lang != "users" && lang != "blocklist") {
			continue
		}
		start := i + 1
		for i++; i < len(lines) && lines[i] != "```"; i++ {
		}
		text := strings.Join(lines[start:i], "\n") + "\n"
		name := fmt.Sprintf("README.md block at line %d", start)
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
		case "users":
			if _, err := userdir.Parse(name, strings.NewReader(text), userdir.Options{Delimiter: "+"}); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
	if blocks["toml"] == 0 || blocks["signatures"] == 0 || blocks["users"] == 0 || blocks["blocklist"] == 0 {
		t.Fatalf("README examples not found: %v", blocks)
	}
}
