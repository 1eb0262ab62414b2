package quota_test

import (
	"testing"

	"mailguard/internal/filter/quota"
	"mailguard/internal/filters/filterstest"
)

func TestDocs(t *testing.T) { filterstest.CheckDocs(t, quota.Name) }
