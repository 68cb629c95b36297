//go:build tools

// Package controlplane pins the commands hack/controlplane/build.sh builds, so
// that go.mod and go.sum record every module they need.
package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
