"""Which split of a dataset each role (train, validation, test) reads.

A hub dataset has named splits (``imdb``: train, test, unsupervised); so does a folder laid out like one, whose
data files are all named after a split (``train.csv``, ``dev.tsv``, ``test.jsonl``, ``train-00001.parquet``).
Each role reads its own split: ``dataset.splits`` names it, else the role's usual name where the dataset has it.
A plain file, glob or folder of other files is one split, read whole by whichever role names it.
"""

from __future__ import annotations

import re
from pathlib import Path

from finetune_trainer.config import HubSplits
from finetune_trainer.errors import InputError

# Usual names per role, in preference order (the names datasets and the seed recipes use).
DEFAULTS = {"train": ("train", "training"), "validation": ("validation", "dev", "valid", "val"), "test": ("test",)}
_NAMED = re.compile(r"^(train|training|validation|dev|valid|val|test)(?:[-_.].*)?$", re.IGNORECASE)


def split_files(files: list[Path]) -> dict[str, list[Path]] | None:
    """Files grouped by the split their names give, when every file names one; else None (one split)."""
    groups: dict[str, list[Path]] = {}
    for f in files:
        stem = f.name.split(".")[0]
        m = _NAMED.match(stem)
        if m is None:
            return None
        groups.setdefault(m.group(1).lower(), []).append(f)
    return groups or None


def hub_split_names(source: str) -> list[str]:
    """The splits a hub dataset offers (asks the hub, or its local cache in offline mode)."""
    import datasets

    try:
        return list(datasets.get_dataset_split_names(source))
    except Exception as e:  # the hub client raises many types; all mean "cannot list this dataset"
        raise InputError(f"dataset: cannot list the splits of hub dataset {source}: {type(e).__name__}: {e}") from None


def choose(role: str, available: list[str], splits: HubSplits, source: str, *, required: bool) -> str | None:
    """The split ``role`` reads from ``available``, None when none applies and ``required`` is False.

    Raises:
        InputError: an explicitly named split, or the required role's usual split, is not among ``available``.
    """
    named = getattr(splits, role)
    if named is not None:
        if named not in available:
            raise InputError(
                f"dataset.splits.{role}: {source} has no split {named!r}; its splits are {', '.join(available)}"
            )
        return named
    found = next((name for name in DEFAULTS[role] if name in available), None)
    if found is None and required:
        raise InputError(
            f"dataset.{role}: {source} has no {role} split ({' or '.join(DEFAULTS[role])}); its splits are "
            f"{', '.join(available)}: set dataset.splits.{role}"
        )
    return found
