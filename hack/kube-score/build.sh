#!/usr/bin/env bash
# Build kube-score (a third-party linter for Kubernetes objects) from its Go module into a cache
# outside the checkout, and print the binary's path. Keyed by the version in go.mod, like
# hack/controlplane/build.sh: every clone reuses one build; an interrupted build leaves nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

version=$(go list -m -f '{{.Version}}' github.com/zegl/kube-score)
cache_root=${FLAG_SCHEDULER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flag-scheduler}
dest="$cache_root/kube-score/$version"
if [[ -x "$dest/kube-score" ]]; then
  echo "$dest/kube-score"
  exit 0
fi
mkdir -p "$cache_root/kube-score"
work=$(mktemp -d "$cache_root/kube-score/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "building kube-score $version into $dest (first time: about a minute)" >&2
go build -trimpath -ldflags "-X main.version=$version" -o "$work/kube-score" github.com/zegl/kube-score/cmd/kube-score
mkdir -p "$dest"
mv "$work/kube-score" "$dest/kube-score"
echo "$dest/kube-score"
