package access_test

import (
	"testing"

	"mailguard/internal/filter/access"
	"mailguard/internal/filters/filterstest"
)

func TestDocs(t *testing.T) { filterstest.CheckDocs(t, access.Name) }
