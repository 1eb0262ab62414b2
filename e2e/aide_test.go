package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// The AIDE rules shipped in dist/aide, with their paths moved into a
// test folder: after the baseline, changing one signature file is
// reported, and only it; a new capture copy is not.
func TestAideRules(t *testing.T) {
	requireCommands(t, map[string]string{"aide": "aide"})
	_, file, _, _ := runtime.Caller(0)
	rules := filepath.Join(filepath.Dir(filepath.Dir(file)), "dist", "aide", "mailguard")
	dir, err := os.MkdirTemp("", "mailguard-aide-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	root := filepath.Join(dir, "root")
	files := map[string]string{
		"etc/mailguard/mailguard.toml":         "[virus]\nsignatures = \"signatures\"\n",
		"etc/mailguard/signatures":             "WORM_X =\n" + sobig + "\n",
		"etc/mailguard/users":                  "alice@example.edu /home/alice/Maildir\n",
		"etc/mailguard/hashes.hsb":             "44d88612fea8a8f36de82e1278abb02f:68:Eicar\n",
		"usr/sbin/mailguard":                   "#!/bin/sh\n",
		"lib/systemd/system/mailguard.service": "[Service]\n",
		"var/lib/mailguard/capture/new/1":      "a copy\n",
	}
	for name, content := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(root, name)), 0o755)
		write(t, filepath.Join(root, name), content)
	}
	rel := strings.TrimPrefix(root, "/")
	// Debian's groups (from its aide.conf), the layout moved, the rules.
	write(t, filepath.Join(dir, "aide.conf"), `database_in=file:`+dir+`/aide.db
database_out=file:`+dir+`/aide.db.new
gzip_dbout=no
report_ignore_e2fsattrs=VNIE
Checksums = H
OwnerMode = p+u+g+ftype
Size = s+b
InodeData = OwnerMode+n+i+Size+l+X
StaticFile = m+c+Checksums
Full = InodeData+StaticFile
VarDir = OwnerMode+n+i+X
@@define MAILGUARD_CONF_DIRECTORY `+rel+`/etc/mailguard
@@define MAILGUARD_BINARY `+rel+`/usr/sbin/mailguard
@@define MAILGUARD_UNIT_DIRECTORY `+rel+`/(usr/)?lib/systemd/system
@@define MAILGUARD_UNIT_DROPINS `+rel+`/etc/systemd/system/mailguard\.service\.d
@@define MAILGUARD_STATE_DIRECTORY `+rel+`/var/lib/mailguard
@@include `+rules+`
`)
	aide := func(args ...string) (string, error) {
		out, err := exec.Command("aide", append([]string{"--config", filepath.Join(dir, "aide.conf")}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := aide("--init"); err != nil {
		t.Fatalf("aide --init: %v\n%s", err, out)
	}
	if err := os.Rename(filepath.Join(dir, "aide.db.new"), filepath.Join(dir, "aide.db")); err != nil {
		t.Fatal(err)
	}
	if out, err := aide("--check"); err != nil {
		t.Fatalf("aide --check right after the baseline: %v\n%s", err, out)
	}

	sigs := filepath.Join(root, "etc/mailguard/signatures")
	write(t, sigs, files["etc/mailguard/signatures"]+"WORM_Y =\n"+sobig+"Y\n")
	write(t, filepath.Join(root, "var/lib/mailguard/capture/new/2"), "another copy\n")
	out, err := aide("--check")
	if err == nil {
		t.Fatalf("aide --check found nothing after a signature file changed:\n%s", out)
	}
	reported := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^[fd][ =<>+!.a-zA-Z]*: (/\S+)$`).FindAllStringSubmatch(out, -1) {
		reported[m[1]] = true
	}
	if len(reported) != 1 || !reported[sigs] {
		t.Errorf("aide --check reported %v, want exactly %s:\n%s", reported, sigs, out)
	}
}
