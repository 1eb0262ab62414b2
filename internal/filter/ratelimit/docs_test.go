package ratelimit_test

import (
	"testing"

	"mailguard/internal/filter/ratelimit"
	"mailguard/internal/filters/filterstest"
)

func TestDocs(t *testing.T) { filterstest.CheckDocs(t, ratelimit.Name) }
