package mimewalk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// maxArchiveNames bounds the names listed of one archive; an archive
// with more is not listed whole.
const maxArchiveNames = 10000

// zipNames lists the names in a zip from its kept end, as the tools that
// open zips read them: the central directory's records, one after the
// other from where the end record says the directory starts, however
// many the end record claims (a count of 65535, or a zip64 count of
// 2^32, is a sender's say-so). It returns every name, or a reason the
// archive could not be listed whole: then the names it did read.
func zipNames(r *ring, size int64) ([]string, string) {
	data, off := r.kept()
	end := endRecord(data)
	if end < 0 {
		if off > 0 {
			return nil, "zip end record not in the bytes kept of the archive's end"
		}
		return nil, "zip end record not found"
	}
	dirSize := int64(binary.LittleEndian.Uint32(data[end+12:]))
	dirEnd := int64(end) // the directory ends where the end record starts
	if loc := end - 20; loc >= 0 && bytes.Equal(data[loc:loc+4], []byte("PK\x06\x07")) {
		// zip64: its own end record, before the locator, has the sizes.
		rec := int64(binary.LittleEndian.Uint64(data[loc+8:])) - off
		if rec >= 0 && rec+56 <= int64(loc) && bytes.Equal(data[rec:rec+4], []byte("PK\x06\x06")) {
			dirSize = int64(binary.LittleEndian.Uint64(data[rec+40:]))
			dirEnd = rec
		}
	}
	start := dirEnd - dirSize
	if dirSize < 0 || dirSize > size || start+off < 0 {
		return nil, fmt.Sprintf("zip central directory size %d does not fit the archive", dirSize)
	}
	if start < 0 {
		return nil, "zip central directory is larger than the bytes kept of the archive's end"
	}
	var names []string
	at := start
	for at < dirEnd {
		if at+46 > dirEnd || !bytes.Equal(data[at:at+4], []byte("PK\x01\x02")) {
			return names, "zip central directory broken after " + fmt.Sprint(len(names)) + " names"
		}
		nameLen := int64(binary.LittleEndian.Uint16(data[at+28:]))
		extraLen := int64(binary.LittleEndian.Uint16(data[at+30:]))
		commentLen := int64(binary.LittleEndian.Uint16(data[at+32:]))
		if at+46+nameLen > dirEnd {
			return names, "zip central directory broken after " + fmt.Sprint(len(names)) + " names"
		}
		if len(names) == maxArchiveNames {
			return names, fmt.Sprintf("zip lists more than %d names", maxArchiveNames)
		}
		names = append(names, clip(strings.ToValidUTF8(string(data[at+46:at+46+nameLen]), "\uFFFD")))
		at += 46 + nameLen + extraLen + commentLen
	}
	return names, ""
}

// endRecord finds the zip end record: the last one whose comment ends
// the archive, else the last one at all (some tools write junk after
// it, and readers still take it).
func endRecord(data []byte) int {
	last := -1
	for i := len(data) - 22; i >= 0; i-- {
		i = bytes.LastIndex(data[:i+4], []byte("PK\x05\x06"))
		if i < 0 {
			break
		}
		if len(data)-i < 22 {
			continue
		}
		if last < 0 {
			last = i
		}
		if i+22+int(binary.LittleEndian.Uint16(data[i+20:])) == len(data) {
			return i
		}
		if len(data)-i > 22+0xffff {
			break
		}
	}
	return last
}
