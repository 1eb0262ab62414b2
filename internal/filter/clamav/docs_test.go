package clamav_test

import (
	"testing"

	"mailguard/internal/filter/clamav"
	"mailguard/internal/filters/filterstest"
)

func TestDocs(t *testing.T) { filterstest.CheckDocs(t, clamav.Name) }
