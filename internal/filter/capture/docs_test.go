package capture_test

import (
	"testing"

	"mailguard/internal/filter/capture"
	"mailguard/internal/filters/filterstest"
)

func TestDocs(t *testing.T) { filterstest.CheckDocs(t, capture.Name) }
