package shared

import (
	"errors"
	"testing"
)

// The part is closed by the last holder, once, whatever order they let go in.
func TestLastHolderCloses(t *testing.T) {
	closed := 0
	a := New("pool", "redis://h:1/0", func(string) error { closed++; return errors.New("bye") })
	b := TakeOver(a, "redis://h:1/0")
	if b == nil || b.Value() != "pool" || a.Holders() != 2 {
		t.Fatalf("take over: %v", b)
	}
	if err := a.Release(); err != nil || closed != 0 {
		t.Fatalf("closed with a holder left (%v)", err)
	}
	a.Release()
	if a.Holders() != 1 {
		t.Fatal("a second release of one ref counted twice")
	}
	if err := b.Release(); err == nil || closed != 1 {
		t.Fatalf("last release: closed %d, err %v", closed, err)
	}
}

// Other settings: no take-over.
func TestTakeOverNeedsTheSameSettings(t *testing.T) {
	a := New(1, "k1", nil)
	if TakeOver(a, "k2") != nil || TakeOver[int](nil, "k1") != nil {
		t.Fatal("taken over with other settings")
	}
	var none *Ref[int]
	if none.Release() != nil {
		t.Fatal("nil release")
	}
}
