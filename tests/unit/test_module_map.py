"""docs/architecture.md's module map names every module of both packages, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"Operator": ROOT / "operator/finetune_operator", "Trainer": ROOT / "trainer_image/finetune_trainer"}


def mapped(kind: str) -> set[str]:
    """The module names in the first column of the ``| <kind> module | Job |`` table."""
    text = (ROOT / "docs/architecture.md").read_text()
    table = text.split(f"| {kind} module | Job |", 1)[1].split("\n\n", 1)[0]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        names.update(re.findall(r"`([\w/]+(?:\.py)?)`", row.split("|")[1]))
    return names


@pytest.mark.parametrize("kind", sorted(PACKAGES))
def test_the_module_map_matches_the_tree(kind: str) -> None:
    folder = PACKAGES[kind]
    tree = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
    tree |= {f"{p.name}/" for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    names = mapped(kind)
    assert tree - names == set(), f"modules docs/architecture.md does not name: {sorted(tree - names)}"
    assert names - tree == set(), f"docs/architecture.md names modules that do not exist: {sorted(names - tree)}"
