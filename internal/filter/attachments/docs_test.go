package attachments_test

import (
	"testing"

	"mailguard/internal/filter/attachments"
	"mailguard/internal/filters/filterstest"
)

func TestDocs(t *testing.T) { filterstest.CheckDocs(t, attachments.Name) }
