//go:build tools

// Package kubescore pins the kube-score command that build.sh builds, so that go.mod and go.sum
// record every module it needs.
package kubescore

import (
	_ "github.com/zegl/kube-score/cmd/kube-score"
)
