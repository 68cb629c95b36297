package main

import (
	"fmt"
	"slices"

	lua "github.com/yuin/gopher-lua"
)

// HealthStatuses are the statuses Argo CD accepts from a health script; anything else it shows
// as Unknown with "Lua returned an invalid health status".
var HealthStatuses = []string{"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

// Health is what a health script returns, as Argo CD reads it.
type Health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// EvalHealth runs a health script on obj and checks its result the way Argo CD does: a table
// with a valid status and an optional string message.
func EvalHealth(script string, obj map[string]any, libs Libraries) (Health, error) {
	value, err := Run(script, obj, libs, ScriptTimeout)
	if err != nil {
		return Health{}, err
	}
	return healthFrom(value)
}

func healthFrom(value lua.LValue) (Health, error) {
	if value.Type() != lua.LTTable {
		return Health{}, fmt.Errorf("the script returned a %s, want a table with status and message", value.Type())
	}
	decoded, err := FromLua(value)
	if err != nil {
		return Health{}, err
	}
	fields, ok := decoded.(map[string]any)
	if !ok {
		return Health{}, fmt.Errorf("the script returned %s, want a table with status and message", show(decoded))
	}
	status, _ := fields["status"].(string)
	if !slices.Contains(HealthStatuses, status) {
		return Health{}, fmt.Errorf("invalid health status %s (Argo CD shows it as Unknown); valid: %v", show(fields["status"]), HealthStatuses)
	}
	message, ok := fields["message"].(string)
	if !ok && fields["message"] != nil {
		return Health{}, fmt.Errorf("message is %s, want a string", show(fields["message"]))
	}
	return Health{Status: status, Message: message}, nil
}
