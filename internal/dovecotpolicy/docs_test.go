package dovecotpolicy_test

import (
	"testing"

	"mailguard/internal/dovecotpolicy"
	"mailguard/internal/filters/filterstest"
)

func TestDocs(t *testing.T) { filterstest.CheckDocs(t, dovecotpolicy.Name) }
