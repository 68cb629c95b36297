package main

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

var schedule = map[string]any{
	"apiVersion": "flagscheduler.dev/v1alpha1",
	"kind":       "FlagSchedule",
	"metadata":   map[string]any{"name": "go-live", "namespace": "shop", "generation": float64(2)},
	"spec":       map[string]any{"cancelled": false, "updates": map[string]any{}},
	"status":     map[string]any{"phase": "Pending", "conditions": []any{}},
}

func TestRestrictedLibrariesLackStringAndOs(t *testing.T) {
	for _, script := range []string{
		`return {status = string.upper("healthy")}`,
		`return {status = ("Healthy"):lower()}`,
		`return {status = "Healthy", message = os.date()}`,
		`local os = require("os"); return {status = "Healthy", message = os.time()}`,
		`return {status = "Healthy", message = tostring(math.floor(1.5))}`,
	} {
		if _, err := EvalHealth(script, schedule, Restricted); err == nil {
			t.Errorf("restricted libraries ran %q", script)
		}
	}
	got, err := EvalHealth(`return {status = "Healthy", message = string.lower("OK")}`, schedule, Open)
	if err != nil || got.Message != "ok" {
		t.Errorf("open libraries: got %+v, %v", got, err)
	}
}

func TestRestrictedLibrariesKeepBaseAndTable(t *testing.T) {
	script := `
local names = {}
for _, c in ipairs(obj.status.conditions) do table.insert(names, c) end
table.insert(names, obj.metadata.name)
return {status = "Healthy", message = table.concat(names, ",") .. " " .. tostring(obj.metadata.generation)}`
	got, err := EvalHealth(script, schedule, Restricted)
	if err != nil || got != (Health{Status: "Healthy", Message: "go-live 2"}) {
		t.Errorf("got %+v, %v", got, err)
	}
}

func TestEndlessScriptIsStopped(t *testing.T) {
	start := time.Now()
	_, err := Run(`while true do end`, schedule, Restricted, 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "stopped after 200ms") {
		t.Fatalf("got %v, want the time limit", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %s to stop", took)
	}
	if ScriptTimeout != time.Second {
		t.Errorf("ScriptTimeout = %s, Argo CD allows 1s", ScriptTimeout)
	}
}

func TestOnlyValidHealthStatusesAreAccepted(t *testing.T) {
	for script, want := range map[string]string{
		`return {status = "Fine"}`:                   `invalid health status "Fine"`,
		`return {message = "no status"}`:             "invalid health status null",
		`return "Healthy"`:                           "returned a string",
		`return nil`:                                 "returned a nil",
		`return {status = "Healthy", message = {1}}`: "message is a list of 1",
	} {
		_, err := EvalHealth(script, schedule, Restricted)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error containing %q", script, err, want)
		}
	}
	for _, status := range HealthStatuses {
		if _, err := EvalHealth(`return {status = "`+status+`"}`, schedule, Restricted); err != nil {
			t.Errorf("%s refused: %v", status, err)
		}
	}
}

func TestScriptErrorIsShownWithoutStackTrace(t *testing.T) {
	_, err := RunAction(`error("no, because", 0)`, schedule, Restricted)
	if err == nil || err.Error() != "no, because" {
		t.Errorf("got %q", err)
	}
}

func TestActionMustKeepTheObjectsIdentity(t *testing.T) {
	_, err := RunAction(`obj.metadata.name = "other"; return obj`, schedule, Restricted)
	if err == nil || !strings.Contains(err.Error(), "identity") {
		t.Errorf("got %v", err)
	}
}

func TestEmptyTablesMatchEmptyObjectsAndLists(t *testing.T) {
	got, err := RunAction(`return obj`, schedule, Restricted)
	if err != nil {
		t.Fatal(err)
	}
	if d := Differences(got, schedule); len(d) > 0 {
		t.Errorf("an unchanged object differs: %v", d)
	}
	changed, _ := RunAction(`obj.spec.cancelled = true; return obj`, schedule, Restricted)
	if d := Differences(changed, schedule); len(d) != 1 || d[0] != ".spec.cancelled: got true, want false" {
		t.Errorf("got %v", d)
	}
}

func TestDiscoveryReadsActionOptions(t *testing.T) {
	got, err := Discover(`return {b = {}, a = {disabled = true, iconClass = "fa", displayName = "A"}}`, schedule, Restricted)
	if err != nil || len(got) != 2 || got[0] != (Action{Name: "a", Disabled: true, IconClass: "fa", DisplayName: "A"}) || got[1] != (Action{Name: "b"}) {
		t.Errorf("got %+v, %v", got, err)
	}
	if _, err := Discover(`return {a = {disable = true}}`, schedule, Restricted); err == nil {
		t.Error("an unknown option (a typo of disabled) was accepted")
	}
}

// writeTree writes files (path -> content) under a temporary directory and returns it.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for path, content := range files {
		full := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestFailingCaseNamesFileAndCase(t *testing.T) {
	root := writeTree(t, map[string]string{
		"g.dev/K/health.lua": "return {status = \"Healthy\", message = obj.metadata.name}\n",
		"g.dev/K/health_test.yaml": `tests:
  - inputPath: testdata/a.yaml
    healthStatus: {status: Healthy, message: a}
  - inputPath: testdata/b.yaml
    healthStatus: {status: Healthy, message: not-b}
`,
		"g.dev/K/testdata/a.yaml": "metadata: {name: a}\n",
		"g.dev/K/testdata/b.yaml": "metadata: {name: b}\n",
	})
	results, err := RunAll(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 2 || results[0].Err != nil || results[1].Err == nil {
		t.Fatalf("got %v", results)
	}
	line := results[1].String()
	for _, want := range []string{"FAIL", filepath.Join(root, "g.dev/K/health_test.yaml"), "case testdata/b.yaml", `"b"`, `"not-b"`} {
		if !strings.Contains(line, want) {
			t.Errorf("%q does not name %q", line, want)
		}
	}
	if code := test(root); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
}

func TestScriptsWithoutTestsFail(t *testing.T) {
	root := writeTree(t, map[string]string{
		"g.dev/K/health.lua":                 "return {status = \"Healthy\"}\n",
		"g.dev/K/actions/discovery.lua":      "return {}\n",
		"g.dev/K/actions/go/action.lua":      "return obj\n",
		"g.dev/K/actions/action_test.yaml":   "discoveryTests: []\n",
		"g.dev/K/actions/testdata/obj.yaml":  "metadata: {name: a}\n",
		"g.dev/K/health_test_typo_name.yaml": "tests: []\n",
	})
	results, _ := RunAll(root)
	var failures []string
	for _, r := range results {
		if r.Err != nil {
			failures = append(failures, r.Case)
		}
	}
	sort.Strings(failures)
	if strings.Join(failures, ";") != "(reading the file);action go;discovery" {
		t.Errorf("failures: %v", failures)
	}
}

func TestUnknownFieldsInTestFilesAreRefused(t *testing.T) {
	root := writeTree(t, map[string]string{
		"g.dev/K/health.lua":       "return {status = \"Healthy\"}\n",
		"g.dev/K/health_test.yaml": "tests:\n  - inputPath: testdata/a.yaml\n    health: {status: Healthy}\n",
	})
	results, _ := RunAll(root)
	if len(results) != 1 || results[0].Err == nil || !strings.Contains(results[0].Err.Error(), "health") {
		t.Errorf("got %v", results)
	}
}

func TestProjectSnippetCarriesEveryScriptVerbatim(t *testing.T) {
	root := filepath.Join("..", "..", "argocd", "resource_customizations")
	text, err := Snippet(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckSnippet(text, root); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{
		"resource.customizations.health.flagscheduler.dev_FeatureFlag: |",
		"resource.customizations.health.flagscheduler.dev_FlagSchedule: |",
		"resource.customizations.actions.flagscheduler.dev_FlagSchedule: |",
		"      - name: cancel\n        action.lua: |",
	} {
		if !strings.Contains(text, key) {
			t.Errorf("the snippet lacks %q", key)
		}
	}
}

func TestSnippetRefusesScriptsYAMLWouldAlter(t *testing.T) {
	for _, content := range []string{"return {}\n\n", "return {}", "  return {}\n"} {
		root := writeTree(t, map[string]string{"g.dev/K/health.lua": content})
		if _, err := Snippet(root); err == nil {
			t.Errorf("%q accepted", content)
		}
	}
}
