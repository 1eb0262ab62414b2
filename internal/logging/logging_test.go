package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"mailguard/internal/config"
)

func TestStderrFormatsAndLevels(t *testing.T) {
	var buf bytes.Buffer
	log, closer, err := New(config.Log{Target: "stderr", Level: "warn", Format: "json"}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	log.Info("hidden")
	log.Warn("shown", "k", "v")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec["msg"] != "shown" || rec["k"] != "v" {
		t.Fatalf("json line %q: %v", buf.String(), err)
	}
	if strings.Contains(buf.String(), "hidden") {
		t.Error("info logged at level warn")
	}
	if _, _, err := New(config.Log{Target: "stderr", Level: "loud"}, &buf); err == nil {
		t.Error("bad level accepted")
	}
}
