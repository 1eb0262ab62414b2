package pidfile

import (
	"path/filepath"
	"strings"
	"testing"
)

// A pid file whose folder is gone (/run emptied at boot) is named in the
// error with its folder, not the temporary file written beside it.
func TestWriteNamesTheConfiguredFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gone", "mailguard.pid")
	err := Write(path)
	if err == nil || !strings.Contains(err.Error(), "cannot write "+path+": its folder "+filepath.Dir(path)+" does not exist") || strings.Contains(err.Error(), ".mailguard-") {
		t.Fatalf("error: %v", err)
	}
}
