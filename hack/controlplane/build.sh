#!/usr/bin/env bash
# Build etcd, kube-apiserver, kube-controller-manager and kubectl from the Go
# module proxy into a cache outside the checkout, and print the directory.
#
# The cache is keyed by the versions in go.mod, so every clone of the repo (and
# CI) reuses one build. A build goes to a temporary directory first and is moved
# into place only when all four binaries exist, so an interrupted build never
# leaves a half-filled cache behind.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

k8s_version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
etcd_version=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
cache_root=${FLAG_SCHEDULER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flag-scheduler}
dest="$cache_root/controlplane/k8s-$k8s_version-etcd-$etcd_version"
binaries=(etcd kube-apiserver kube-controller-manager kubectl)

complete() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$dest/$b" ]] || return 1; done
}

if complete; then
  echo "$dest"
  exit 0
fi

mkdir -p "$cache_root/controlplane"
work=$(mktemp -d "$cache_root/controlplane/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

minor=${k8s_version#v1.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
cgo=k8s.io/client-go/pkg/version
stamp="-X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
stamp+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
stamp+=" -X $cgo.gitVersion=$k8s_version -X $cgo.gitMajor=1 -X $cgo.gitMinor=$minor"
stamp+=" -X $cgo.gitTreeState=clean"

# One progress line per stage on the terminal; everything Go prints goes to the log, which is
# printed whole if a stage fails.
log="$cache_root/controlplane/build-$(date -u +%Y%m%dT%H%M%SZ).log"
echo "building control plane $k8s_version, etcd $etcd_version into $dest (first time: 5-7 minutes)" >&2
echo "  full build log: $log" >&2
stage() {
  local what=$1 t0
  shift
  t0=$(date +%s)
  printf '  %s ... ' "$what" >&2
  if ! "$@" >>"$log" 2>&1; then
    echo "failed after $(( $(date +%s) - t0 )) s; the full log ($log):" >&2
    cat "$log" >&2
    exit 1
  fi
  echo "done in $(( $(date +%s) - t0 )) s" >&2
}
start=$(date +%s)
stage "downloading Go modules" go mod download
stage "compiling etcd, kube-apiserver, kube-controller-manager, kubectl" \
  env CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $stamp" -o "$work/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl \
  ./cmd/etcd
echo "built in $(( $(date +%s) - start )) s" >&2

rm -rf "$dest"
mv "$work" "$dest"
trap - EXIT
echo "$dest"
