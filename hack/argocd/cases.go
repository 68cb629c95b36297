package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// Result is the outcome of one case of one test file; Err is nil when it passed.
type Result struct {
	File string // the health_test.yaml or action_test.yaml
	Case string // what was run, e.g. "testdata/pending.yaml" or "action cancel on testdata/applied.yaml"
	Err  error
}

func (r Result) String() string {
	if r.Err == nil {
		return fmt.Sprintf("ok   %s: %s", r.File, r.Case)
	}
	return fmt.Sprintf("FAIL %s: case %s: %v", r.File, r.Case, r.Err)
}

type healthTests struct {
	Tests []struct {
		InputPath    string `json:"inputPath"`
		HealthStatus Health `json:"healthStatus"`
	} `json:"tests"`
}

type actionTests struct {
	DiscoveryTests []struct {
		InputPath string   `json:"inputPath"`
		Result    []Action `json:"result"`
	} `json:"discoveryTests"`
	ActionTests []struct {
		Action               string `json:"action"`
		InputPath            string `json:"inputPath"`
		ExpectedOutputPath   string `json:"expectedOutputPath"`
		ExpectedErrorMessage string `json:"expectedErrorMessage"`
	} `json:"actionTests"`
}

// RunAll runs every health_test.yaml and action_test.yaml under root (Argo CD's
// resource_customizations layout: <group>/<Kind>/health.lua, <group>/<Kind>/actions/...), each
// case with restricted and with open libraries. A script without a test file is a failure.
func RunAll(root string) ([]Result, error) {
	var results []Result
	found := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.Name() == "health.lua":
			found++
			results = append(results, runHealthFile(filepath.Join(filepath.Dir(path), "health_test.yaml"))...)
		case d.Name() == "discovery.lua":
			found++
			results = append(results, runActionFile(filepath.Join(filepath.Dir(path), "action_test.yaml"))...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if found == 0 {
		return nil, fmt.Errorf("no health.lua or actions/discovery.lua under %s", root)
	}
	return results, nil
}

func runHealthFile(file string) []Result {
	var spec healthTests
	if err := readStrict(file, &spec); err != nil {
		return []Result{{File: file, Case: "(reading the file)", Err: err}}
	}
	if len(spec.Tests) == 0 {
		return []Result{{File: file, Case: "(reading the file)", Err: errors.New("no tests")}}
	}
	dir := filepath.Dir(file)
	script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
	if err != nil {
		return []Result{{File: file, Case: "(reading health.lua)", Err: err}}
	}
	var results []Result
	for _, test := range spec.Tests {
		results = append(results, Result{File: file, Case: test.InputPath, Err: checkHealth(string(script), dir, test.InputPath, test.HealthStatus)})
	}
	return results
}

func checkHealth(script, dir, input string, want Health) error {
	if !slices.Contains(HealthStatuses, want.Status) {
		return fmt.Errorf("the expected status %q is not one Argo CD accepts (%v)", want.Status, HealthStatuses)
	}
	obj, err := readObject(filepath.Join(dir, input))
	if err != nil {
		return err
	}
	for _, libs := range []Libraries{Restricted, Open} {
		got, err := EvalHealth(script, obj, libs)
		if err != nil {
			return fmt.Errorf("with %s: %w", libs, err)
		}
		if got != want {
			return fmt.Errorf("with %s: got %s %q, want %s %q", libs, got.Status, got.Message, want.Status, want.Message)
		}
	}
	return nil
}

func runActionFile(file string) []Result {
	var spec actionTests
	if err := readStrict(file, &spec); err != nil {
		return []Result{{File: file, Case: "(reading the file)", Err: err}}
	}
	dir := filepath.Dir(file)
	discovery, err := os.ReadFile(filepath.Join(dir, "discovery.lua"))
	if err != nil {
		return []Result{{File: file, Case: "(reading discovery.lua)", Err: err}}
	}
	var results []Result
	for _, test := range spec.DiscoveryTests {
		err := checkDiscovery(string(discovery), dir, test.InputPath, test.Result)
		results = append(results, Result{File: file, Case: "discovery on " + test.InputPath, Err: err})
	}
	tested := map[string]bool{}
	for _, test := range spec.ActionTests {
		tested[test.Action] = true
		err := checkAction(dir, test.Action, test.InputPath, test.ExpectedOutputPath, test.ExpectedErrorMessage)
		results = append(results, Result{File: file, Case: fmt.Sprintf("action %s on %s", test.Action, test.InputPath), Err: err})
	}
	for _, name := range actionNames(dir) {
		if !tested[name] {
			results = append(results, Result{File: file, Case: "action " + name, Err: errors.New("actions/" + name + "/action.lua has no test")})
		}
	}
	if len(spec.DiscoveryTests) == 0 {
		results = append(results, Result{File: file, Case: "discovery", Err: errors.New("discovery.lua has no test")})
	}
	return results
}

func checkDiscovery(script, dir, input string, want []Action) error {
	obj, err := readObject(filepath.Join(dir, input))
	if err != nil {
		return err
	}
	sort.Slice(want, func(i, j int) bool { return want[i].Name < want[j].Name })
	for _, libs := range []Libraries{Restricted, Open} {
		got, err := Discover(script, obj, libs)
		if err != nil {
			return fmt.Errorf("with %s: %w", libs, err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("with %s: got %+v, want %+v", libs, got, want)
		}
	}
	return nil
}

func checkAction(dir, name, input, expectedPath, expectedError string) error {
	if (expectedPath == "") == (expectedError == "") {
		return errors.New("give exactly one of expectedOutputPath and expectedErrorMessage")
	}
	script, err := os.ReadFile(filepath.Join(dir, name, "action.lua"))
	if err != nil {
		return err
	}
	obj, err := readObject(filepath.Join(dir, input))
	if err != nil {
		return err
	}
	var want map[string]any
	if expectedPath != "" {
		if want, err = readObject(filepath.Join(dir, expectedPath)); err != nil {
			return err
		}
	}
	for _, libs := range []Libraries{Restricted, Open} {
		got, err := RunAction(string(script), obj, libs)
		if expectedError != "" {
			if err == nil || err.Error() != expectedError {
				return fmt.Errorf("with %s: got error %v, want error %q", libs, err, expectedError)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("with %s: %w", libs, err)
		}
		if d := Differences(got, want); len(d) > 0 {
			return fmt.Errorf("with %s: the result differs from %s:\n    %s", libs, expectedPath, strings.Join(d, "\n    "))
		}
	}
	return nil
}

// actionNames lists the actions defined under an actions/ directory (one sub-directory each).
func actionNames(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "action.lua")); e.IsDir() && err == nil {
			names = append(names, e.Name())
		}
	}
	return names
}

func readStrict(path string, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.UnmarshalStrict(data, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// readObject reads a Kubernetes object from YAML, numbers as float64 (as JSON decodes them).
func readObject(path string) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var obj map[string]any
	if err := yaml.Unmarshal(data, &obj); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if obj == nil {
		return nil, fmt.Errorf("%s: empty", path)
	}
	return obj, nil
}
