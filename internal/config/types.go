package config

import (
	"encoding"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"
)

// The TOML decoder stops at the first value of the wrong type and names Go
// types in its message. So the document is first read as plain TOML values
// and walked beside the type it will be decoded into: every key of the
// wrong type and every unknown key is reported at its line, in words a
// postmaster knows, and left out; the rest is then decoded.

var textUnmarshaler = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()

// checkTypes reports the keys of tree that the type t cannot take, and
// removes them from tree. prefix is the dotted path of tree.
func checkTypes(tree map[string]any, t reflect.Type, prefix string, v *Checker) {
	fields := tomlFields(t)
	names := make([]string, 0, len(tree))
	for k := range tree {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, key := range names {
		full := prefix + key
		ft, ok := fields[key]
		if !ok {
			msg := fmt.Sprintf("unknown key %q", full)
			if near := nearest(key, fields); near != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", prefix+near)
			}
			v.errs = append(v.errs, &Error{File: v.file, Line: v.lines[full], Msg: msg})
			v.markBad(full)
			delete(tree, key)
			continue
		}
		if sub, isTable := tree[key].(map[string]any); isTable && isTableType(ft) {
			checkTypes(sub, deref(ft), full+".", v)
			continue
		}
		if want := fits(tree[key], ft); want != "" {
			v.fail(full, "want %s, not %s", want, describe(tree[key]))
			delete(tree, key)
		}
	}
}

// tomlFields maps the toml keys of a struct type (embedded structs
// flattened, as the decoder does) to their types.
func tomlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	t = deref(t)
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if f.Anonymous && key == "" {
			for k, ft := range tomlFields(f.Type) {
				out[k] = ft
			}
			continue
		}
		if key != "" && key != "-" {
			out[key] = f.Type
		}
	}
	return out
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

func isTableType(t reflect.Type) bool {
	t = deref(t)
	return t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(textUnmarshaler)
}

// fits returns "" if a TOML value can go into type t, else what t wants,
// in words.
func fits(val any, t reflect.Type) string {
	base := deref(t)
	switch {
	case base == reflect.TypeOf(Duration{}):
		if _, ok := val.(string); !ok {
			return `a duration in quotes, such as "30s" or "5m"`
		}
	case base == reflect.TypeOf(Size{}):
		if _, ok := val.(string); !ok {
			return `a size in quotes, such as "500K" or "25M"`
		}
	case base.Kind() == reflect.String:
		if _, ok := val.(string); !ok {
			return "a string in quotes"
		}
	case base.Kind() == reflect.Bool:
		if _, ok := val.(bool); !ok {
			return "true or false"
		}
	case base.Kind() == reflect.Int, base.Kind() == reflect.Int64:
		if _, ok := val.(int64); !ok {
			return "a whole number"
		}
	case base.Kind() == reflect.Slice && base.Elem().Kind() == reflect.String:
		list, ok := val.([]any)
		if !ok {
			return `a list of strings, such as ["a", "b"]`
		}
		for _, x := range list {
			if _, ok := x.(string); !ok {
				return `a list of strings, such as ["a", "b"]`
			}
		}
	case isTableType(base):
		if _, ok := val.(map[string]any); !ok {
			return "a section"
		}
	}
	return ""
}

// describe names a TOML value's kind.
func describe(val any) string {
	switch val.(type) {
	case string:
		return "a string"
	case int64:
		return "a whole number"
	case float64:
		return "a number with a fraction"
	case bool:
		return "true or false"
	case []any:
		return "a list"
	case map[string]any:
		return "a section"
	case time.Time:
		return "a date and time"
	}
	return "a date or time"
}

// nearest is the known key closest to an unknown one, if it is close
// enough to be a typo.
func nearest(key string, known map[string]reflect.Type) string {
	best, bestDist := "", 3
	for k := range known {
		if d := distance(key, k); d < bestDist || d == bestDist && k < best {
			best, bestDist = k, d
		}
	}
	return best
}

// distance is the Levenshtein distance between two short keys.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
