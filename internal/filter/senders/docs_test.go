package senders_test

import (
	"testing"

	"mailguard/internal/filter/senders"
	"mailguard/internal/filters/filterstest"
)

func TestDocs(t *testing.T) { filterstest.CheckDocs(t, senders.Name) }
