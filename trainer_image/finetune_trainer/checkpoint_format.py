"""What a checkpoint is on storage, and reading one back (checkpoint.py writes them).

One prefix per step, ``checkpoint-<step:08d>/``: ``state.pt`` (rank 0), ``rank-<r:05d>.pt`` (each rank),
``done-<r:05d>.json`` (each rank's objects, after its uploads) and ``manifest.json``, written last: a checkpoint
exists once its manifest does, and is used only once every object matches the size and sha256 it lists.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from finetune_trainer.storage import NotFoundError, Storage

FORMAT = 1
MANIFEST = "manifest.json"
STATE = "state.pt"
PREFIX_RE = re.compile(r"^checkpoint-(\d{8,})/")


def checkpoint_prefix(step: int) -> str:
    return f"checkpoint-{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def done_marker(rank: int) -> str:
    return f"done-{rank:05d}.json"


class CheckpointError(Exception):
    """A checkpoint could not be saved or loaded; the message names it and says what to check."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's manifest is missing or invalid, or an object does not match it."""


@dataclass
class CheckpointInfo:
    step: int
    key: str  # the checkpoint's prefix, e.g. "checkpoint-00000200"
    metric: float | None
    manifest: dict


class HashingWriter:
    """File wrapper that hashes and counts what torch.save writes, saving a second pass over the file."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def file_digest(path: Path) -> tuple[int, str]:
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def _safe_globals() -> list:
    """numpy types found in RNG states; allowed so loads can stay ``weights_only=True``."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.float32, np.bool_)]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *dtypes]


def torch_load(path: Path, map_location: Any) -> Any:
    import torch

    with torch.serialization.safe_globals(_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def scan(storage: Storage) -> dict[int, set[str]]:
    """step -> names of the objects under its prefix, committed or not."""
    groups: dict[int, set[str]] = {}
    for key in storage.list("checkpoint-"):
        if m := PREFIX_RE.match(key):
            groups.setdefault(int(m.group(1)), set()).add(key[m.end() :])
    return groups


def retention_drops(groups: dict[int, set[str]], metric: Callable[[int], float | None], keep_last: int,
                    keep_best: bool, mode: str) -> list[int]:  # fmt: skip
    """Steps whose objects retention deletes: committed ones but the last ``keep_last`` and the best by ``metric``
    (``mode`` max or min), and uncommitted ones older than the newest commit (interrupted saves)."""
    committed = sorted(step for step, names in groups.items() if MANIFEST in names)
    if not committed:
        return []
    keep = set(committed[-keep_last:])
    if keep_best:
        scored = [(m, step) for step in committed if (m := metric(step)) is not None]
        if scored:
            best = max(scored) if mode == "max" else min(scored, key=lambda ms: (ms[0], -ms[1]))
            keep.add(best[1])
    drop = [s for s in committed if s not in keep]
    return drop + [s for s in groups if s not in committed and s < committed[-1]]


def read_manifest(storage: Storage, url: str, step: int) -> CheckpointInfo:
    """The manifest of ``step`` under ``url``; CorruptCheckpointError when it is not a valid one."""
    prefix = checkpoint_prefix(step)
    where = f"checkpoint {url}/{prefix}/{MANIFEST}"
    try:
        manifest = json.loads(storage.get_bytes(f"{prefix}/{MANIFEST}"))
    except NotFoundError:
        raise CorruptCheckpointError(f"{where}: deleted while reading") from None
    except ValueError as e:
        raise CorruptCheckpointError(f"{where}: not valid JSON ({e})") from None
    objects = manifest.get("objects") if isinstance(manifest, dict) else None
    valid = (
        isinstance(objects, list)
        and manifest.get("step") == step
        and all(isinstance(o, dict) and {"key", "size", "sha256"} <= o.keys() for o in objects)
    )
    if not valid:
        raise CorruptCheckpointError(f"{where}: not a manifest for step {step} with objects key/size/sha256")
    metric = manifest.get("metric")
    return CheckpointInfo(step, prefix, float(metric) if isinstance(metric, int | float) else None, manifest)


def download_verified(storage: Storage, url: str, info: CheckpointInfo, folder: Path, keep: set[str],
                      names: set[str] | None = None) -> dict[str, Path]:  # fmt: skip
    """Download the manifest's objects (or ``names`` of them) and check size and sha256.

    Into ``folder``: keeps the files named in ``keep`` (what this rank loads) and returns them; hashes the rest
    and drops them. Any failure removes the folder.
    """
    files: dict[str, Path] = {}
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for obj in info.manifest["objects"]:
            name = obj["key"]
            if names is not None and name not in names:
                continue
            local = folder / name
            try:
                storage.get_file(f"{info.key}/{name}", local)
            except NotFoundError:
                raise CorruptCheckpointError(
                    f"checkpoint {url}/{info.key}: object {name} listed in the manifest is missing"
                ) from None
            size, sha = file_digest(local)
            if size != obj["size"] or sha != obj["sha256"]:
                raise CorruptCheckpointError(
                    f"checkpoint {url}/{info.key}: object {name} does not match the manifest "
                    f"(size {size} vs {obj['size']}, sha256 {sha[:12]}... vs {str(obj['sha256'])[:12]}...)"
                )
            if name in keep:
                files[name] = local
            else:
                local.unlink()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return files
