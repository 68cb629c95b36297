package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

const snippetHeader = `# Generated from argocd/resource_customizations by ` + "`make argocd-snippet`" + `: do not edit by hand.
# A strategic-merge patch of Argo CD's argocd-cm ConfigMap (applied by kustomization.yaml, a
# kustomize Component) adding the flag-scheduler health checks and resource actions. They run in
# Argo CD's restricted Lua mode: no resource.customizations.useOpenLibs.* key is needed.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
data:
`

// Snippet renders the argocd-cm patch for every <group>/<Kind> under root: its health.lua as
// resource.customizations.health.<group>_<Kind>, and its actions/ as
// resource.customizations.actions.<group>_<Kind> (discovery.lua plus one definition per action).
func Snippet(root string) (string, error) {
	kinds, err := filepath.Glob(filepath.Join(root, "*", "*"))
	if err != nil {
		return "", err
	}
	sort.Strings(kinds)
	var b strings.Builder
	b.WriteString(snippetHeader)
	for _, dir := range kinds {
		key := filepath.Base(filepath.Dir(dir)) + "_" + filepath.Base(dir)
		if err := writeHealth(&b, dir, key); err != nil {
			return "", err
		}
		if err := writeActions(&b, dir, key); err != nil {
			return "", err
		}
	}
	return b.String(), nil
}

func writeHealth(b *strings.Builder, dir, key string) error {
	script, err := readScript(filepath.Join(dir, "health.lua"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(b, "  resource.customizations.health.%s: |\n%s", key, indent(script, 4))
	return nil
}

func writeActions(b *strings.Builder, dir, key string) error {
	actions := filepath.Join(dir, "actions")
	discovery, err := readScript(filepath.Join(actions, "discovery.lua"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(b, "  resource.customizations.actions.%s: |\n", key)
	fmt.Fprintf(b, "    discovery.lua: |\n%s", indent(discovery, 6))
	b.WriteString("    definitions:\n")
	for _, name := range actionNames(actions) {
		script, err := readScript(filepath.Join(actions, name, "action.lua"))
		if err != nil {
			return err
		}
		fmt.Fprintf(b, "      - name: %s\n        action.lua: |\n%s", name, indent(script, 10))
	}
	return nil
}

// readScript reads a Lua file that a YAML literal block (|) can carry byte for byte.
func readScript(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := string(data)
	switch {
	case !strings.HasSuffix(s, "\n") || strings.HasSuffix(s, "\n\n"):
		return "", fmt.Errorf("%s must end with exactly one newline", path)
	case strings.HasPrefix(s, " ") || strings.HasPrefix(s, "\n"):
		return "", fmt.Errorf("%s must not start with a space or an empty line", path)
	case strings.Contains(s, "\r"):
		return "", fmt.Errorf("%s must use \\n line endings", path)
	}
	return s, nil
}

func indent(s string, n int) string {
	pad := strings.Repeat(" ", n)
	lines := strings.SplitAfter(s, "\n")
	for i, line := range lines {
		if line != "\n" && line != "" {
			lines[i] = pad + line
		}
	}
	return strings.Join(lines, "")
}

// CheckSnippet parses a rendered snippet and confirms every value is its file's exact content,
// so a YAML quirk in the rendering cannot change a script.
func CheckSnippet(snippet, root string) error {
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal([]byte(snippet), &cm); err != nil {
		return err
	}
	for key, value := range cm.Data {
		group, kind, kindKey := splitKey(key)
		dir := filepath.Join(root, group, kind)
		if kindKey == "health" {
			if err := sameAsFile(value, filepath.Join(dir, "health.lua")); err != nil {
				return err
			}
			continue
		}
		var actions struct {
			Discovery   string `json:"discovery.lua"`
			Definitions []struct {
				Name   string `json:"name"`
				Action string `json:"action.lua"`
			} `json:"definitions"`
		}
		if err := yaml.UnmarshalStrict([]byte(value), &actions); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		if err := sameAsFile(actions.Discovery, filepath.Join(dir, "actions", "discovery.lua")); err != nil {
			return err
		}
		for _, d := range actions.Definitions {
			if err := sameAsFile(d.Action, filepath.Join(dir, "actions", d.Name, "action.lua")); err != nil {
				return err
			}
		}
	}
	return nil
}

func splitKey(key string) (group, kind, what string) {
	rest := strings.TrimPrefix(key, "resource.customizations.")
	what, groupKind, _ := strings.Cut(rest, ".")
	i := strings.LastIndex(groupKind, "_")
	return groupKind[:i], groupKind[i+1:], what
}

func sameAsFile(value, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if value != string(data) {
		return fmt.Errorf("the snippet's copy of %s differs from the file", path)
	}
	return nil
}
