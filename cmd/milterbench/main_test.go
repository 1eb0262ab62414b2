package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func runCmd(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestHelpAndReports(t *testing.T) {
	if code, out, _ := runCmd("--help"); code != 0 || !strings.Contains(out, "milterbench run") {
		t.Fatalf("--help: %d\n%s", code, out)
	}
	dir := t.TempDir()
	if code, out, errOut := runCmd("gen", "-dir", filepath.Join(dir, "c"), "-count", "3", "-size", "2000"); code != 0 ||
		out != "milterbench gen: wrote 3 messages of about 2000 bytes to "+filepath.Join(dir, "c")+"\n" {
		t.Fatalf("gen: %d %q %s", code, out, errOut)
	}
	if code, out, _ := runCmd("worm", "-dir", filepath.Join(dir, "w"), "-count", "2", "-widths", "76,72"); code != 0 || !strings.Contains(out, "wrote 2 copies") {
		t.Fatalf("worm: %d %q", code, out)
	}
}

func TestParsePIDs(t *testing.T) {
	file := filepath.Join(t.TempDir(), "mailguard.pid")
	os.WriteFile(file, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	for in, want := range map[string]int{"12": 1, "12,34": 2, "12 34 56": 3, file: 1, "": 0} {
		pids, err := parsePIDs(in)
		if err != nil || len(pids) != want {
			t.Errorf("%q: %v %v", in, pids, err)
		}
	}
	if _, err := parsePIDs("12,x"); err == nil {
		t.Error("a bad id accepted")
	}
}
