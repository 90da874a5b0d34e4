"""The import contracts of pyproject.toml (docs/architecture.md's layers) hold for the tree, and break when a
module crosses a layer: `lint-imports` is what scripts/test.sh runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the project's contracts over the packages under ``tree``."""
    env = {**os.environ, "PYTHONPATH": f"{tree / 'operator'}:{tree / 'trainer_image'}", "COLUMNS": "400"}
    return subprocess.run([str(LINT), "--no-cache", "--config", str(tree / "pyproject.toml")], cwd=tree,
                          capture_output=True, text=True, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the two packages and pyproject.toml, to add imports to."""
    root = tmp_path_factory.mktemp("tree")
    for package in ("operator/finetune_operator", "trainer_image/finetune_trainer"):
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def added(tree: Path, module: str, line: str) -> Path:
    path = tree / module
    path.with_suffix(".orig").write_bytes(path.read_bytes())
    path.write_text(path.read_text() + f"\n\ndef _crossing():\n    {line}\n")  # lazy imports count too
    return path


def restore(path: Path) -> None:
    path.write_bytes(path.with_suffix(".orig").read_bytes())


def test_a_new_module_must_be_given_a_layer(tree: Path) -> None:
    new = tree / "operator/finetune_operator/unplaced.py"
    new.write_text('"""A module no layer names."""\n')
    try:
        result = lint(tree)
    finally:
        new.unlink()
    assert result.returncode != 0 and "unplaced" in result.stdout, result.stdout[-3000:]


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "broken" in result.stdout and "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("operator/finetune_operator/settings.py", "import torch", "The operator never imports torch"),
        ("operator/finetune_operator/controller.py", "from finetune_operator import local",
         "never load the local backend"),
        ("trainer_image/finetune_trainer/checkpoint.py", "import kubernetes", "The trainer never imports kopf"),
        ("operator/finetune_operator/resources.py", "from finetune_operator import kube", "The operator's layers"),
        ("operator/finetune_operator/observed.py", "from finetune_operator import controller", "The operator's layers"),
        ("operator/finetune_operator/lifecycle.py", "import boto3", "Only the operator's I/O modules import a client"),
        ("operator/finetune_operator/status.py", "import kopf", "Only the operator's I/O modules import a client"),
    ],
)  # fmt: skip
def test_a_module_crossing_a_layer_breaks_its_contract(tree: Path, module: str, line: str, contract: str) -> None:
    path = added(tree, module, line)
    try:
        result = lint(tree)
    finally:
        restore(path)
    assert result.returncode != 0
    broken = [block for block in result.stdout.split("\n\n") if "BROKEN" in block]
    assert any(contract in block for block in broken), result.stdout[-3000:]
