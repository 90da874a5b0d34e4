#!/usr/bin/env bash
# Builds the test cluster's one binary (tests/cluster: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler) into .cache/bin/kubecluster. Go's module and build caches live under .cache/go, so a warm
# build only checks them. Prints the binary's path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${FINETUNE_CACHE_DIR:-$ROOT/.cache}"
command -v go >/dev/null || { echo "build-cluster: needs Go >= 1.26 on PATH (https://go.dev/dl)" >&2; exit 1; }
# -modcacherw: Go makes the module cache read-only by default, which would stop `rm -rf .cache`.
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -modcacherw"

cd "$ROOT/tests/cluster"
version="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
minor="${version#v1.}"
minor="${minor%%.*}"
# The version the components report (kubectl version, /version); upstream's release build stamps the same.
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$CACHE/bin/kubecluster" .
echo "$CACHE/bin/kubecluster"
