package main

import (
	"fmt"
	"sort"

	lua "github.com/yuin/gopher-lua"
)

// Action is one entry of what a discovery script offers, as Argo CD lists it.
type Action struct {
	Name        string `json:"name"`
	Disabled    bool   `json:"disabled,omitempty"`
	IconClass   string `json:"iconClass,omitempty"`
	DisplayName string `json:"displayName,omitempty"`
}

// Discover runs a discovery.lua script: it must return a table of action name -> options
// ({} or a table with disabled, iconClass, displayName).
func Discover(script string, obj map[string]any, libs Libraries) ([]Action, error) {
	value, err := Run(script, obj, libs, ScriptTimeout)
	if err != nil {
		return nil, err
	}
	if value.Type() != lua.LTTable {
		return nil, fmt.Errorf("discovery returned a %s, want a table of actions", value.Type())
	}
	decoded, err := FromLua(value)
	if err != nil {
		return nil, err
	}
	if _, empty := decoded.(EmptyTable); empty {
		return nil, nil
	}
	entries, ok := decoded.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("discovery returned %s, want a table keyed by action name", show(decoded))
	}
	actions := make([]Action, 0, len(entries))
	for name, options := range entries {
		action, err := actionFrom(name, options)
		if err != nil {
			return nil, err
		}
		actions = append(actions, action)
	}
	sort.Slice(actions, func(i, j int) bool { return actions[i].Name < actions[j].Name })
	return actions, nil
}

func actionFrom(name string, options any) (Action, error) {
	action := Action{Name: name}
	if _, empty := options.(EmptyTable); empty {
		return action, nil
	}
	fields, ok := options.(map[string]any)
	if !ok {
		return action, fmt.Errorf("action %q: options are %s, want a table", name, show(options))
	}
	for key, value := range fields {
		switch key {
		case "disabled":
			b, ok := value.(bool)
			if !ok {
				return action, fmt.Errorf("action %q: disabled is %s, want a boolean", name, show(value))
			}
			action.Disabled = b
		case "iconClass", "displayName":
			s, ok := value.(string)
			if !ok {
				return action, fmt.Errorf("action %q: %s is %s, want a string", name, key, show(value))
			}
			if key == "iconClass" {
				action.IconClass = s
			} else {
				action.DisplayName = s
			}
		default:
			return action, fmt.Errorf("action %q: unknown option %q (Argo CD knows disabled, iconClass, displayName)", name, key)
		}
	}
	return action, nil
}

// RunAction runs an action.lua script and returns the object it produced. Only the classic form
// (return the modified obj) is supported; it must keep the object's kind, name and namespace.
func RunAction(script string, obj map[string]any, libs Libraries) (map[string]any, error) {
	value, err := Run(script, obj, libs, ScriptTimeout)
	if err != nil {
		return nil, err
	}
	if value.Type() != lua.LTTable {
		return nil, fmt.Errorf("the action returned a %s, want the modified object", value.Type())
	}
	decoded, err := FromLua(value)
	if err != nil {
		return nil, err
	}
	result, ok := decoded.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("the action returned %s, want the modified object (the list form is not supported here)", show(decoded))
	}
	for _, d := range Differences(identity(result), identity(obj)) {
		return nil, fmt.Errorf("the action changed the object's identity: %s", d)
	}
	return result, nil
}

func identity(obj map[string]any) map[string]any {
	meta, _ := obj["metadata"].(map[string]any)
	return map[string]any{
		"apiVersion": obj["apiVersion"],
		"kind":       obj["kind"],
		"name":       meta["name"],
		"namespace":  meta["namespace"],
	}
}
