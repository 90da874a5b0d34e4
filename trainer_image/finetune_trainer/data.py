"""Labelled text in, token ids out: loading, label encoding, tokenization, sampling and dynamic padding.

Files load through Hugging Face ``datasets`` (csv/json/parquet builders) whether they are local, in a package,
or downloaded from S3; a hub dataset name goes through ``datasets.load_dataset(name)``. Tokenization pads
nothing: each batch is padded to its own longest example by ``collate``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_trainer.config import DataFormat, DatasetSpec, Hyperparameters, TaskSpec, TaskType
from finetune_trainer.dataset_splits import split_files
from finetune_trainer.errors import InputError
from finetune_trainer.preprocessing import Preprocessing, TextEncoder
from finetune_trainer.sources import local_files

log = logging.getLogger(__name__)

_BUILDER = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "csv"}


@dataclass
class TextSplit:
    """One split as plain columns: texts, optional pair texts, and raw labels."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[Any]
    source: str


@dataclass
class Encoded:
    """A tokenized split; ``labels`` is int64 (single-label) or float32 (multi-label rows, regression)."""

    input_ids: list[list[int]]
    labels: np.ndarray
    token_type_ids: list[list[int]] | None = None
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.input_ids)


def _builder_for(files: list[Path], fmt: str, field_name: str) -> tuple[str, dict[str, Any]]:
    if fmt != DataFormat.AUTO:
        suffix = {"csv": ".csv", "tsv": ".tsv", "json": ".json", "jsonl": ".jsonl", "parquet": ".parquet"}[fmt]
    else:
        suffixes = {f.suffix.lower() for f in files}
        if len(suffixes) != 1 or next(iter(suffixes)) not in _BUILDER:
            raise InputError(
                f"{field_name}: cannot tell the format of {[f.name for f in files][:3]}; "
                "set dataset.format to csv, tsv, json, jsonl or parquet"
            )
        suffix = next(iter(suffixes))
    kwargs: dict[str, Any] = {}
    if suffix == ".tsv":
        kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    return _BUILDER[suffix], kwargs


def _check_utf8(files: list[Path], field_name: str) -> None:
    for f in files:
        if f.suffix.lower() == ".parquet":
            continue
        with f.open("rb") as fh:
            for lineno, line in enumerate(fh, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputError(
                        f"{field_name}: {f} is not UTF-8 text (line {lineno}, byte {e.start}: "
                        f"{line[e.start : e.start + 1]!r}); re-encode it as UTF-8"
                    ) from None


def load_split(source: str, spec: DatasetSpec, field_name: str, cache_dir: Path, split: str | None = None) -> TextSplit:
    """Load one split's text and label columns, with errors that name the field, file and columns.

    ``split`` names the split of a hub dataset or of a split-named folder (``finetune_trainer.roles`` picks it).
    """
    import datasets

    datasets.disable_progress_bars()
    files = local_files(source, field_name, cache_dir)
    if split is not None and files is not None:
        files = (split_files(files) or {}).get(split, files)
    try:
        if files is None:
            ds = datasets.load_dataset(source, split=split or "train")
        else:
            _check_utf8(files, field_name)
            builder, kwargs = _builder_for(files, spec.format, field_name)
            ds = datasets.load_dataset(
                builder, data_files=[str(f) for f in files], split="train", cache_dir=str(cache_dir / "datasets"),
                **kwargs,
            )
    except InputError:
        raise
    except Exception as e:  # datasets wraps parser errors in many types; all mean "this file is not readable"
        cause = e.__cause__ or e
        empty = "corresponds to no data" in str(cause) or "No columns to parse" in str(cause)
        if empty or isinstance(cause, StopIteration):  # StopIteration: the json builder found no line at all
            raise InputError(f"{field_name}: {source} has no rows") from None
        raise InputError(f"{field_name}: cannot read {source}: {type(cause).__name__}: {cause}".strip()) from None
    columns = ds.column_names
    wanted = {"textColumn": spec.text_column, "labelColumn": spec.label_column}
    if spec.text_pair_column:
        wanted["textPairColumn"] = spec.text_pair_column
    for key, col in wanted.items():
        if col not in columns:
            raise InputError(f"dataset.{key} {col!r} not in columns {columns} of {source}")
    if len(ds) == 0:
        raise InputError(f"{field_name}: {source} has no rows")
    texts = ds[spec.text_column]
    pairs = ds[spec.text_pair_column] if spec.text_pair_column else None
    labels = ds[spec.label_column]
    for name, col in (("textColumn", texts), ("textPairColumn", pairs or [])):
        bad = next((i for i, t in enumerate(col) if not isinstance(t, str)), None)
        if bad is not None:
            raise InputError(
                f"dataset.{name}: row {bad + 1} of {source} is {col[bad]!r}, expected text (empty or malformed row?)"
            )
    return TextSplit(list(texts), list(pairs) if pairs is not None else None, list(labels), source)


# --- labels ------------------------------------------------------------------------------------------------


def _split_multi(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return list(json.loads(text))
            except json.JSONDecodeError:
                pass
        sep = "|" if "|" in text else ","
        return [p.strip() for p in text.split(sep) if p.strip()]
    if value is None:
        return []
    return [value]


def label_names_from(splits: Sequence[TextSplit], spec: DatasetSpec, task: TaskSpec) -> list[str]:
    """Label names in id order: the spec's; else ids 0..max for integers from 0; else the integers seen, in numeric
    order, as names (scores 1-5); else the sorted set of names seen."""
    if task.type == TaskType.REGRESSION:
        return []
    if spec.label_names:
        return list(spec.label_names)
    seen: set[Any] = set()
    for split in splits:
        for row, v in enumerate(split.labels, 1):
            items = _split_multi(v) if task.type == TaskType.MULTI_LABEL else [v]
            for item in items:
                if isinstance(item, list | dict):  # JSON rows can hold anything; none of it names a class
                    raise InputError(_not_a_label(split.source, row, item, task))
            seen.update(item for item in items if item is not None)  # a missing label is reported by encode_labels
    if seen and all(isinstance(v, int) and not isinstance(v, bool) for v in seen):
        if min(seen) == 0:  # ids 0..n-1 (a class may be missing from the training rows)
            return [str(i) for i in range(task.num_labels or max(seen) + 1)]
        # Scores such as 1-5 are names, in numeric order: id 0 is "1", no empty class 0.
        return [str(v) for v in sorted(seen)]
    return sorted(str(v) for v in seen)


def _not_a_label(source: str, row: int, value: Any, task: TaskSpec) -> str:
    hint = ""
    if isinstance(value, list) and task.type == TaskType.SINGLE_LABEL:
        hint = "; for several labels per row set task.type multi_label_classification"
    return f"dataset.labelColumn in {source}: row {row} is {value!r}, expected a label name or id{hint}"


def encode_labels(split: TextSplit, names: list[str], task: TaskSpec) -> np.ndarray:
    """Raw label column -> ids, multi-hot rows or floats, with an error naming the first bad row."""
    where = f"dataset.labelColumn in {split.source}"
    if task.type == TaskType.REGRESSION:
        out = np.empty(len(split.labels), dtype=np.float32)
        for i, v in enumerate(split.labels):
            try:
                out[i] = float(v)
            except (TypeError, ValueError):
                raise InputError(f"{where}: row {i + 1} is {v!r}, expected a number for regression") from None
            if not math.isfinite(out[i]):
                raise InputError(f"{where}: row {i + 1} is {v!r}, expected a finite number")
        return out
    index = {n: i for i, n in enumerate(names)}

    def to_id(v: Any, row: int) -> int:
        if v is None:
            raise InputError(f"{where}: row {row} has no label (an empty cell or a short row?)")
        if isinstance(v, list | dict):
            raise InputError(_not_a_label(split.source, row, v, task))
        if isinstance(v, bool):
            raise InputError(f"{where}: row {row} is {v!r}, expected one of {names[:10]} or an id")
        if isinstance(v, int | np.integer) and str(v) not in index:
            if 0 <= v < len(names):
                return int(v)
            raise InputError(f"{where}: row {row} has label id {v}, out of range 0..{len(names) - 1}")
        key = str(v).strip()
        if key not in index:
            raise InputError(
                f"{where}: row {row} has unknown label {v!r}; expected one of {names[:10]}"
                + (" ..." if len(names) > 10 else "")
            )
        return index[key]

    if task.type == TaskType.MULTI_LABEL:
        out = np.zeros((len(split.labels), len(names)), dtype=np.float32)
        for i, v in enumerate(split.labels):
            for item in _split_multi(v):
                out[i, to_id(item, i + 1)] = 1.0
        return out
    return np.array([to_id(v, i + 1) for i, v in enumerate(split.labels)], dtype=np.int64)


# --- tokenization ------------------------------------------------------------------------------------------


def preprocessing_of(spec: DatasetSpec, hp: Hyperparameters) -> Preprocessing:
    """The job's preprocessing definition, recorded with the model and used by every later encoding."""
    return Preprocessing(
        max_length=hp.max_seq_length, truncation=str(hp.truncation), head_tokens=hp.head_tokens,
        text_pair=spec.text_pair_column is not None, cleaning=tuple(spec.cleaning),
    )


def tokenize(split: TextSplit, tokenizer: Any, prep: Preprocessing, labels: np.ndarray) -> Encoded:
    """Tokenize without padding through the model's preprocessing definition (``TextEncoder``)."""
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("model.name: the tokenizer has no fast version (tokenizer.json); training and serving need it")
    wants_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ["token_type_ids"])
    ids, types = TextEncoder(tokenizer.backend_tokenizer, prep).encode(split.texts, split.pairs)
    lengths = np.fromiter((len(s) for s in ids), dtype=np.int64, count=len(ids))
    return Encoded(input_ids=ids, labels=labels, token_type_ids=types if wants_types else None, lengths=lengths)


@dataclass
class Collator:
    """Pads a batch to its longest sequence (rounded up to a multiple, e.g. 8 for tensor cores)."""

    pad_id: int
    pad_to_multiple_of: int = 1

    def __call__(self, data: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        longest = max(len(data.input_ids[i]) for i in indices)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        types = torch.zeros((len(indices), width), dtype=torch.long) if data.token_type_ids is not None else None
        for row, i in enumerate(indices):
            seq = data.input_ids[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            if types is not None:
                types[row, : len(seq)] = torch.tensor(data.token_type_ids[i])
        batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.from_numpy(data.labels[list(indices)])}
        if types is not None:
            batch["token_type_ids"] = types
        return batch


class EpochSampler(torch.utils.data.Sampler[int]):
    """This rank's share of a seeded per-epoch order, able to start mid-epoch (for exact resume).

    Like DistributedSampler (reshuffled each epoch, padded to a multiple of the world size), with optional
    class-balanced sampling (multinomial with replacement over per-example weights) and optional grouping by
    length: with ``lengths`` and ``batch_size``, each run of ``GROUP_BATCHES`` batches of this rank's order is
    sorted by length, cut into batches, and those batches shuffled, so a batch pads little (as the Trainer's
    ``group_by_length``). The order stays a pure function of seed and epoch, so resuming mid-epoch still works.
    """

    GROUP_BATCHES = 50

    def __init__(self, n: int, *, rank: int, world_size: int, seed: int, shuffle: bool = True,
                 weights: np.ndarray | None = None, lengths: np.ndarray | None = None, batch_size: int = 1):
        self.n, self.rank, self.world_size, self.seed, self.shuffle = n, rank, world_size, seed, shuffle
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.lengths, self.batch_size = lengths, batch_size
        self.epoch = 0
        self.start = 0
        self.per_rank = math.ceil(n / world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` indices of this rank."""
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.per_rank * self.world_size
        if self.weights is not None:
            idx = torch.multinomial(self.weights, total, replacement=True, generator=g).tolist()
        elif self.shuffle:
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        idx += idx[: total - len(idx)]
        mine = idx[self.rank : total : self.world_size]
        return self._grouped(mine, g) if self.lengths is not None else mine

    def _grouped(self, order: list[int], g: torch.Generator) -> list[int]:
        size = self.batch_size * self.GROUP_BATCHES
        out: list[int] = []
        for start in range(0, len(order), size):
            group = sorted(order[start : start + size], key=lambda i: -int(self.lengths[i]))
            chunks = [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
            # A short last chunk stays last, so that only the epoch's final batch may be short.
            full = [c for c in chunks if len(c) == self.batch_size]
            rest = [c for c in chunks if len(c) < self.batch_size]
            for k in torch.randperm(len(full), generator=g).tolist():
                out += full[k]
            for c in rest:
                out += c
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


def batches(data: Encoded, sampler: EpochSampler, batch_size: int, collate: Collator) -> Iterator[dict]:
    """Micro-batches of this rank for the sampler's current epoch (the last one may be short)."""
    order = list(sampler)
    for i in range(0, len(order), batch_size):
        yield collate(data, order[i : i + batch_size])


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-example weights that make every class equally likely (single-label)."""
    counts = np.bincount(labels)
    return (1.0 / counts[labels]).astype(np.float64)


def class_weights(labels: np.ndarray, n: int) -> np.ndarray:
    """Inverse-frequency loss weights, normalised to mean 1 (sklearn's 'balanced')."""
    counts = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=n)
    counts = np.maximum(counts, 1)
    return (counts.sum() / (n * counts)).astype(np.float32)


def limit(split: TextSplit, n: int | None, seed: int) -> TextSplit:
    """At most ``n`` rows, chosen with a seed so that every rank and every run takes the same ones."""
    if n is None or len(split.texts) <= n:
        return split
    ix = sorted(np.random.default_rng(seed).permutation(len(split.texts))[:n])
    return TextSplit(
        [split.texts[i] for i in ix],
        [split.pairs[i] for i in ix] if split.pairs is not None else None,
        [split.labels[i] for i in ix],
        split.source,
    )
