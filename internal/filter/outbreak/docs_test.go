package outbreak_test

import (
	"testing"

	"mailguard/internal/filter/outbreak"
	"mailguard/internal/filters/filterstest"
)

func TestDocs(t *testing.T) { filterstest.CheckDocs(t, outbreak.Name) }
