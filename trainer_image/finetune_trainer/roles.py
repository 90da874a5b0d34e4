"""The job's three datasets: train, validation and test, from their sources, a dataset's own splits, or held out.

Order matters and is fixed: the test set is taken first (``dataset.test``, ``dataset.testSplit`` held out of
train, or the training dataset's own test split), so that training and model selection never see it; then
``maxTrainSamples`` limits train; then validation (``dataset.validation``, the dataset's own validation split, or
``validationSplit`` held out of what is left). Hold-outs are seeded and, for single-label tasks, stratified.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune_trainer import data as D
from finetune_trainer import dataset_splits
from finetune_trainer.config import DatasetSpec, TaskSpec, TaskType
from finetune_trainer.errors import InputError
from finetune_trainer.sources import local_files

log = logging.getLogger(__name__)


@dataclass
class Roles:
    train: D.TextSplit
    validation: D.TextSplit
    test: D.TextSplit | None
    label_names: list[str]  # from the whole training source, before anything is held out of it


def available_splits(source: str, field: str, cache_dir: Path) -> list[str] | None:
    """The named splits behind ``source`` (a hub dataset or a split-named folder), None for one plain split."""
    files = local_files(source, field, cache_dir)
    if files is None:
        return dataset_splits.hub_split_names(source)
    named = dataset_splits.split_files(files)
    return sorted(named) if named else None


def _load(role: str, source: str, spec: DatasetSpec, cache_dir: Path, names: list[str] | None) -> D.TextSplit:
    """``role``'s data from ``source``; of a dataset with named splits (``names``), the role's split."""
    split = dataset_splits.choose(role, names, spec.splits, source, required=True) if names else None
    return D.load_split(source, spec, f"dataset.{role}", cache_dir, split=split)


def _own_split(role: str, train_splits: list[str] | None, spec: DatasetSpec, cache_dir: Path) -> D.TextSplit | None:
    """``role``'s split of the training dataset, when it has one (named in dataset.splits or the usual name)."""
    if not train_splits:
        return None
    split = dataset_splits.choose(role, train_splits, spec.splits, spec.train, required=False)
    if split is None:
        return None
    log.info("dataset.%s: split %r of %s", role, split, spec.train)
    return D.load_split(spec.train, spec, f"dataset.{role}", cache_dir, split=split)


def load_roles(spec: DatasetSpec, task: TaskSpec, seed: int, cache_dir: Path) -> Roles:
    """Train, validation and test text for the job (see the module docstring for the order)."""
    train_splits = available_splits(spec.train, "dataset.train", cache_dir)
    train = _load("train", spec.train, spec, cache_dir, train_splits)
    # Labels are named and checked over the whole file first, so an error names the file's own row and a class
    # whose only rows are held out still counts.
    label_names = D.label_names_from([train], spec, task)
    D.encode_labels(train, label_names, task)
    stratify = task.type == TaskType.SINGLE_LABEL
    if spec.test:
        test = _load("test", spec.test, spec, cache_dir, available_splits(spec.test, "dataset.test", cache_dir))
    elif spec.test_split is not None:
        train, test = hold_out(train, spec.test_split, seed + 1, stratify, "test")
    else:
        test = _own_split("test", train_splits, spec, cache_dir)
    train = D.limit(train, spec.max_train_samples, seed)
    if spec.validation:
        names = available_splits(spec.validation, "dataset.validation", cache_dir)
        val = _load("validation", spec.validation, spec, cache_dir, names)
    else:
        val = _own_split("validation", train_splits, spec, cache_dir)
        if val is None:
            train, val = hold_out(train, spec.validation_split, seed, stratify, "validation")
    limit = spec.max_eval_samples
    held = D.limit(test, limit, seed) if test is not None else None
    return Roles(train, D.limit(val, limit, seed), held, label_names)


def hold_out(split: D.TextSplit, ratio: float, seed: int, stratify: bool, role: str) -> tuple[D.TextSplit, D.TextSplit]:
    """Hold out ``ratio`` of the rows (seeded); with ``stratify``, that share of every label's rows."""
    n = len(split.texts)
    if n < 2:
        raise InputError(f"dataset.train: {split.source} has {n} row; need at least 2 to hold out {role} rows")
    rng = np.random.default_rng(seed)
    if stratify:
        groups: dict[str, list[int]] = {}
        for i, label in enumerate(split.labels):
            groups.setdefault(str(label), []).append(i)
        held = []
        for key in sorted(groups):
            members = np.array(groups[key])[rng.permutation(len(groups[key]))]
            held += members[: round(len(members) * ratio)].tolist()
        if not held:
            held = [int(rng.integers(n))]
    else:
        held = rng.permutation(n)[: max(1, round(n * ratio))].tolist()
    chosen = set(held)
    if len(chosen) == n:
        raise InputError(f"dataset.train: {split.source} has {n} rows; holding out {ratio:.0%} as {role} leaves none")
    kept = [i for i in range(n) if i not in chosen]
    held_source = f"{split.source} (held-out {ratio:.0%} {role})"
    return _take(split, kept, split.source), _take(split, sorted(chosen), held_source)


def _take(split: D.TextSplit, ix: Sequence[int], source: str) -> D.TextSplit:
    return D.TextSplit(
        [split.texts[i] for i in ix],
        [split.pairs[i] for i in ix] if split.pairs is not None else None,
        [split.labels[i] for i in ix],
        source,
    )
