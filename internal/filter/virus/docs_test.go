package virus_test

import (
	"testing"

	"mailguard/internal/filter/virus"
	"mailguard/internal/filters/filterstest"
)

func TestDocs(t *testing.T) { filterstest.CheckDocs(t, virus.Name) }
