package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// ScriptTimeout is how long one script may run: Argo CD gives every health or action script one
// second before it cancels the Lua state.
const ScriptTimeout = time.Second

// Libraries says which Lua standard libraries a script gets.
type Libraries int

const (
	// Restricted is what Argo CD gives scripts from argocd-cm unless
	// resource.customizations.useOpenLibs.<group_kind> is set: base, table and package only,
	// so no string, math, os or io. (Argo CD also preloads a module with os.time and os.date
	// for require("os"); this harness offers no clock: our scripts are pure functions of the
	// object, and one that reads the time fails here.)
	Restricted Libraries = iota
	// Open is every gopher-lua library, as Argo CD gives its built-in (upstream) scripts.
	Open
)

func (l Libraries) String() string {
	if l == Open {
		return "open libraries"
	}
	return "restricted libraries"
}

// Run executes script with the object as the global obj (and an empty actionParams, as Argo CD
// sets for scripts run without parameters) and returns the script's return value.
func Run(script string, obj map[string]any, libs Libraries, timeout time.Duration) (lua.LValue, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: libs == Restricted})
	defer l.Close()
	if libs == Restricted {
		for name, open := range map[string]lua.LGFunction{
			lua.BaseLibName: lua.OpenBase,
			lua.TabLibName:  lua.OpenTable,
			lua.LoadLibName: lua.OpenPackage,
		} {
			if err := l.CallByParam(lua.P{Fn: l.NewFunction(open), Protect: true}, lua.LString(name)); err != nil {
				return nil, fmt.Errorf("opening the %s library: %w", name, err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("actionParams", l.NewTable())
	value, err := ToLua(l, obj)
	if err != nil {
		return nil, fmt.Errorf("obj: %w", err)
	}
	l.SetGlobal("obj", value)

	fn, err := l.LoadString(script)
	if err != nil {
		return nil, err
	}
	l.Push(fn)
	if err := l.PCall(0, 1, nil); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("stopped after %s (Argo CD's limit): %w", timeout, ctx.Err())
		}
		return nil, scriptError(err)
	}
	return l.Get(-1), nil
}

// scriptError is the error as Argo CD shows it: the raised value, without the Lua stack trace.
func scriptError(err error) error {
	var apiErr *lua.ApiError
	if errors.As(err, &apiErr) && apiErr.Object != nil {
		return errors.New(apiErr.Object.String())
	}
	return err
}
