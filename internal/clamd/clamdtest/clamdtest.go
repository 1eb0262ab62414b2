// Package clamdtest speaks clamd's side of its protocol, for the stand-in
// clamds of tests (a real clamd is used too; stand-ins reach the cases a
// real one will not show on demand: a stall, an early close).
package clamdtest

import (
	"encoding/binary"
	"errors"
	"io"
)

// ErrTooLong is a stream past the limit ReadChunks was given.
var ErrTooLong = errors.New("clamdtest: stream longer than its limit")

// ReadCommand reads a z-command ("zINSTREAM") up to its NUL.
func ReadCommand(r io.Reader) (string, error) {
	var cmd []byte
	b := make([]byte, 1)
	for len(cmd) < 20 {
		if _, err := io.ReadFull(r, b); err != nil {
			return "", err
		}
		if b[0] == 0 {
			return string(cmd), nil
		}
		cmd = append(cmd, b[0])
	}
	return "", errors.New("clamdtest: command too long")
}

// ReadChunks reads an INSTREAM's length-prefixed chunks up to the
// zero-length one that ends it, giving each to fn; past limit bytes it
// stops with ErrTooLong, as clamd's StreamMaxLength does.
func ReadChunks(r io.Reader, limit int, fn func([]byte)) error {
	total := 0
	for {
		var n [4]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return err
		}
		size := int(binary.BigEndian.Uint32(n[:]))
		if size == 0 {
			return nil
		}
		if total += size; total > limit {
			return ErrTooLong
		}
		chunk := make([]byte, size)
		if _, err := io.ReadFull(r, chunk); err != nil {
			return err
		}
		fn(chunk)
	}
}
