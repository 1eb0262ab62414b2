package mimewalk

import (
	"io"
	"mime"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/charset"
)

// fileNames are every name a part carries, as a mail client may show
// one: each filename and name parameter of each Content-Disposition and
// Content-Type field, read leniently. The standard parser gives up on a
// field with a duplicate or broken parameter ("filename=a.txt;
// filename=evil.exe", "filename=evil.exe; =x"); clients do not, and show
// one of the names, the first or the last. Each is decoded (RFC 2231,
// encoded words), without the directory a sender put in it; the first is
// the one the standard reading gives, when it gives one.
func fileNames(h message.Header) []string {
	var names []string
	add := func(name string) {
		name = strings.ReplaceAll(name, "\\", "/")
		name = clip(path.Base(strings.TrimRight(name, "/")))
		if name == "" || name == "." || name == "/" {
			return
		}
		for _, n := range names {
			if n == name {
				return
			}
		}
		if len(names) < maxNames {
			names = append(names, name)
		}
	}
	if _, params, err := h.ContentDisposition(); err == nil {
		add(params["filename"])
	}
	if _, params, err := h.ContentType(); err == nil {
		add(params["name"])
	}
	for _, field := range []string{"Content-Disposition", "Content-Type"} {
		for _, v := range h.Values(field) {
			for _, n := range paramNames(v) {
				add(n)
			}
		}
	}
	return names
}

// maxNames bounds the names kept of one part.
const maxNames = 16

var wordDecoder = mime.WordDecoder{CharsetReader: charset.Reader}

// paramNames reads a field's filename and name parameters, however
// many, whatever else is broken around them.
func paramNames(value string) []string {
	var names []string
	type segment struct {
		value   string
		encoded bool
	}
	split := map[string]map[int]segment{} // RFC 2231 continuations
	for _, p := range looseParams(value) {
		key, val := p[0], p[1]
		base, rest, cut := strings.Cut(key, "*")
		if base != "filename" && base != "name" {
			continue
		}
		switch {
		case !cut:
			if d, err := wordDecoder.DecodeHeader(val); err == nil {
				val = d
			}
			names = append(names, val)
		case rest == "":
			names = append(names, extValue(val))
		default:
			num, enc := strings.CutSuffix(rest, "*")
			i, err := strconv.Atoi(num)
			if err != nil || i < 0 || i > 100 {
				continue
			}
			if split[base] == nil {
				split[base] = map[int]segment{}
			}
			split[base][i] = segment{val, enc}
		}
	}
	bases := make([]string, 0, len(split))
	for b := range split {
		bases = append(bases, b)
	}
	sort.Strings(bases)
	for _, b := range bases {
		var whole strings.Builder
		for i := 0; ; i++ {
			s, ok := split[b][i]
			if !ok {
				break
			}
			if s.encoded && i == 0 {
				whole.WriteString(extValue(s.value))
			} else if s.encoded {
				u, _ := url.PathUnescape(s.value)
				whole.WriteString(u)
			} else {
				whole.WriteString(s.value)
			}
		}
		names = append(names, whole.String())
	}
	return names
}

// extValue decodes an RFC 2231 value: charset'language'percent-encoded.
func extValue(v string) string {
	cs, rest, ok := strings.Cut(v, "'")
	if !ok {
		u, _ := url.PathUnescape(v)
		return u
	}
	_, text, _ := strings.Cut(rest, "'")
	raw, err := url.PathUnescape(text)
	if err != nil {
		raw = text
	}
	switch strings.ToLower(cs) {
	case "", "utf-8", "us-ascii":
		return raw
	}
	r, err := charset.Reader(cs, strings.NewReader(raw))
	if err != nil {
		return raw
	}
	b, err := io.ReadAll(io.LimitReader(r, 4*maxName))
	if err != nil {
		return raw
	}
	return string(b)
}

// looseParams splits a field's parameters ("; key=value" pairs, values
// quoted or not), skipping what is broken instead of giving up.
func looseParams(v string) [][2]string {
	var out [][2]string
	i := strings.IndexByte(v, ';')
	if i < 0 {
		return nil
	}
	v = v[i:]
	for len(v) > 0 && len(out) < 64 {
		v = strings.TrimLeft(v, "; \t\r\n")
		eq := strings.IndexAny(v, "=;")
		if eq < 0 {
			break
		}
		key := strings.ToLower(strings.TrimSpace(v[:eq]))
		if v[eq] == ';' {
			v = v[eq:]
			continue
		}
		v = strings.TrimLeft(v[eq+1:], " \t\r\n")
		var val string
		if strings.HasPrefix(v, `"`) {
			var b strings.Builder
			j := 1
			for ; j < len(v) && v[j] != '"'; j++ {
				if v[j] == '\\' && j+1 < len(v) {
					j++
				}
				b.WriteByte(v[j])
			}
			val, v = b.String(), v[min(j+1, len(v)):]
			if k := strings.IndexByte(v, ';'); k >= 0 {
				v = v[k:]
			} else {
				v = ""
			}
		} else {
			k := strings.IndexByte(v, ';')
			if k < 0 {
				k = len(v)
			}
			val, v = strings.TrimRight(v[:k], " \t\r\n"), v[k:]
		}
		if key != "" {
			out = append(out, [2]string{key, val})
		}
	}
	return out
}
