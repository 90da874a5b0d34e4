#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine (Python packages, S3/Triton/Prometheus/helm
# test tools) into .venv and .cache/, then runs the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
# torch first, pinned: PyPI's standard build (CUDA libraries included, about 4.7 GB; runs on the CPU here).
# The project asks only for torch>=2.4, so `.[dev]` keeps it.
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
bash scripts/install-test-deps.sh >/dev/null

# The test cluster (tests/cluster: real etcd, kube-apiserver, controller-manager and scheduler built from their Go
# modules, process-runtime nodes) runs by default where Go is installed: FINETUNE_TEST_CLUSTER=1 (the default)
# builds it and runs every cluster test but the long scenarios, =all those too (disruptions, Kueue, control-plane
# faults, chaos), =0 leaves the cluster out. docs/e2e.md has the times.
# Built here, not in a test's setup: the cold build (module downloads and compile) takes 7-12 minutes on 2 cores,
# longer than one test may. Should the Go module proxy refuse a module, the cluster tests are skipped with the
# build's error above, and the rest of the suite still runs.
if ! command -v go >/dev/null; then
  : "${FINETUNE_TEST_CLUSTER:=0}"
fi
export FINETUNE_TEST_CLUSTER="${FINETUNE_TEST_CLUSTER:-1}"
if [ "$FINETUNE_TEST_CLUSTER" != 0 ] && ! bash scripts/build-cluster.sh >/dev/null; then
  echo "test.sh: the test cluster did not build (see above); its tests are skipped" >&2
  export FINETUNE_TEST_CLUSTER=0
fi
if [ "$FINETUNE_TEST_CLUSTER" = all ]; then
  bash scripts/build-kueue.sh >/dev/null  # the Kueue tests' controller (about 5 minutes cold)
fi

ruff check .
lint-imports  # pyproject.toml's [tool.importlinter]: the operator's layers, no torch in the operator, no kopf in the trainer
python -m pytest "$@"
