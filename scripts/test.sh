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

ruff check .
lint-imports  # pyproject.toml's [tool.importlinter]: the operator's layers, no torch in the operator, no kopf in the trainer
python -m pytest "$@"
