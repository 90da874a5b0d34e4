#!/usr/bin/env bash
# Builds the Kueue controller manager (sigs.k8s.io/kueue/cmd/kueue at KUEUE_VERSION) into .cache/bin/kueue for
# the test cluster. Kueue's own go.mod pins its dependencies (k8s.io/* v0.35, controller-runtime), so it is built
# as its own main module with `go install`, not beside the cluster binary. Its CRDs and webhook manifests stay in
# the module cache (config/components/), where tests/fixtures/kueue.py reads them. Prints the binary's path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${FINETUNE_CACHE_DIR:-$ROOT/.cache}"
VERSION="${KUEUE_VERSION:-v0.17.0}"
command -v go >/dev/null || { echo "build-kueue: needs Go >= 1.26 on PATH (https://go.dev/dl)" >&2; exit 1; }
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -modcacherw"
export GOBIN="$CACHE/go/bin-kueue-$VERSION"

# kueue has no --version flag: the version built is recorded beside the binary.
if [ ! -x "$CACHE/bin/kueue" ] || [ "$(cat "$CACHE/bin/kueue.version" 2>/dev/null)" != "$VERSION" ]; then
    mkdir -p "$CACHE/bin"
    pkg=sigs.k8s.io/kueue/pkg/version
    nice -n 19 go install -trimpath -ldflags "-s -w -X $pkg.GitVersion=$VERSION" "sigs.k8s.io/kueue/cmd/kueue@$VERSION"
    cp "$GOBIN/kueue" "$CACHE/bin/kueue.tmp" && mv "$CACHE/bin/kueue.tmp" "$CACHE/bin/kueue"
    echo "$VERSION" >"$CACHE/bin/kueue.version"
fi
echo "$CACHE/bin/kueue"
