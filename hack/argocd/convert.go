package main

import (
	"fmt"
	"math"
	"reflect"
	"sort"
	"strings"

	lua "github.com/yuin/gopher-lua"
)

// EmptyTable is a Lua table with no entries: Lua cannot tell an empty object from an empty
// list, so it matches either (Argo CD turns it back into whichever the input had).
type EmptyTable struct{}

// ToLua turns a decoded JSON value (maps, slices, float64, string, bool, nil) into Lua values,
// the way Argo CD hands a Kubernetes object to a script: objects and lists become tables,
// numbers become Lua numbers.
func ToLua(l *lua.LState, value any) (lua.LValue, error) {
	switch v := value.(type) {
	case nil:
		return lua.LNil, nil
	case bool:
		return lua.LBool(v), nil
	case string:
		return lua.LString(v), nil
	case float64:
		return lua.LNumber(v), nil
	case int64:
		return lua.LNumber(v), nil
	case int:
		return lua.LNumber(v), nil
	case []any:
		t := l.CreateTable(len(v), 0)
		for i, item := range v {
			lv, err := ToLua(l, item)
			if err != nil {
				return nil, fmt.Errorf("[%d]%w", i, err)
			}
			t.Append(lv)
		}
		return t, nil
	case map[string]any:
		t := l.CreateTable(0, len(v))
		for key, item := range v {
			lv, err := ToLua(l, item)
			if err != nil {
				return nil, fmt.Errorf(".%s%w", key, err)
			}
			t.RawSetString(key, lv)
		}
		return t, nil
	}
	return nil, fmt.Errorf(": unsupported value %T", value)
}

// FromLua turns a script's return value back into JSON-like Go values. A table whose keys are
// exactly 1..n is a list, one with only string keys an object, an empty one an EmptyTable;
// anything else (functions, mixed keys) is an error naming the path.
func FromLua(value lua.LValue) (any, error) {
	return fromLua(value, "")
}

func fromLua(value lua.LValue, path string) (any, error) {
	switch v := value.(type) {
	case *lua.LNilType:
		return nil, nil
	case lua.LBool:
		return bool(v), nil
	case lua.LString:
		return string(v), nil
	case lua.LNumber:
		return float64(v), nil
	case *lua.LTable:
		return tableFromLua(v, path)
	}
	return nil, fmt.Errorf("%s: a %s cannot be turned into JSON", orRoot(path), value.Type())
}

func tableFromLua(t *lua.LTable, path string) (any, error) {
	n := t.MaxN()
	var keys []lua.LValue
	t.ForEach(func(k, _ lua.LValue) { keys = append(keys, k) })
	if len(keys) == 0 {
		return EmptyTable{}, nil
	}
	if n == len(keys) {
		list := make([]any, n)
		for i := 1; i <= n; i++ {
			item, err := fromLua(t.RawGetInt(i), fmt.Sprintf("%s[%d]", path, i-1))
			if err != nil {
				return nil, err
			}
			list[i-1] = item
		}
		return list, nil
	}
	object := make(map[string]any, len(keys))
	for _, k := range keys {
		key, ok := k.(lua.LString)
		if !ok {
			return nil, fmt.Errorf("%s: a table mixing list entries and %s keys cannot be turned into JSON", orRoot(path), k.Type())
		}
		item, err := fromLua(t.RawGetString(string(key)), path+"."+string(key))
		if err != nil {
			return nil, err
		}
		object[string(key)] = item
	}
	return object, nil
}

func orRoot(path string) string {
	if path == "" {
		return "(root)"
	}
	return path
}

// Differences lists where got and want differ, one line per path ("(root)" for the top).
// Numbers compare by value (1 and 1.0 are equal), an EmptyTable equals an empty object or list.
func Differences(got, want any) []string {
	var out []string
	diff(got, want, "", &out)
	sort.Strings(out)
	return out
}

func diff(got, want any, path string, out *[]string) {
	if _, ok := got.(EmptyTable); ok && isEmptyContainer(want) {
		return
	}
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			*out = append(*out, fmt.Sprintf("%s: got %s, want an object", orRoot(path), show(got)))
			return
		}
		for key := range union(g, w) {
			gv, gok := g[key]
			wv, wok := w[key]
			switch {
			case !gok:
				*out = append(*out, fmt.Sprintf("%s.%s: missing, want %s", path, key, show(wv)))
			case !wok:
				*out = append(*out, fmt.Sprintf("%s.%s: got %s, want no such field", path, key, show(gv)))
			default:
				diff(gv, wv, path+"."+key, out)
			}
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			*out = append(*out, fmt.Sprintf("%s: got %s, want %s", orRoot(path), show(got), show(want)))
			return
		}
		for i := range w {
			diff(g[i], w[i], fmt.Sprintf("%s[%d]", path, i), out)
		}
	default:
		if !scalarEqual(got, want) {
			*out = append(*out, fmt.Sprintf("%s: got %s, want %s", orRoot(path), show(got), show(want)))
		}
	}
}

func isEmptyContainer(v any) bool {
	switch w := v.(type) {
	case map[string]any:
		return len(w) == 0
	case []any:
		return len(w) == 0
	}
	return false
}

func union(a, b map[string]any) map[string]struct{} {
	keys := make(map[string]struct{}, len(a)+len(b))
	for k := range a {
		keys[k] = struct{}{}
	}
	for k := range b {
		keys[k] = struct{}{}
	}
	return keys
}

func scalarEqual(got, want any) bool {
	if g, ok := number(got); ok {
		w, ok := number(want)
		return ok && g == w
	}
	return reflect.DeepEqual(got, want)
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, !math.IsNaN(n)
	case int64:
		return float64(n), true
	case int:
		return float64(n), true
	}
	return 0, false
}

func show(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("%q", x)
	case EmptyTable:
		return "{}"
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return "an object with " + strings.Join(keys, ", ")
	case []any:
		return fmt.Sprintf("a list of %d", len(x))
	}
	return fmt.Sprint(v)
}
