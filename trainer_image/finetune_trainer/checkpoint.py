"""Atomic, resumable checkpoints on a :class:`~finetune_trainer.storage.Storage`.

Layout under the base URL, one prefix per step::

    checkpoint-00000200/state.pt          replicated state (model, optimizer, scheduler, scaler, trainer dict); rank 0
    checkpoint-00000200/rank-00001.pt     per-rank state (RNG states); every rank writes its own
    checkpoint-00000200/done-00001.json   rank 1's objects with size and sha256, written after its uploads
    checkpoint-00000200/manifest.json     written LAST by rank 0, once every rank's done marker is there

A checkpoint exists only once its manifest does, and :meth:`CheckpointManager.latest` also checks every
object's size and sha256 against it, so an interrupted or corrupted save is never resumed from.

``save()`` copies the state to CPU memory (the only part the training loop waits for) and uploads in one
background thread; the next ``save()`` waits for the previous upload. The background thread uses no
torch.distributed collectives: ranks meet through done markers in storage. All ranks of one save share a
``save_id`` (broadcast once in ``save()``, on the caller's thread), so a marker left by an earlier,
interrupted attempt at the same step is never mistaken for the current one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finetune_trainer.checkpoint_format import (
    FORMAT,
    MANIFEST,
    STATE,
    CheckpointError,
    HashingWriter,
    checkpoint_prefix,
    done_marker,
    rank_file,
    retention_drops,
    scan,
)
from finetune_trainer.checkpoint_load import CheckpointLoading
from finetune_trainer.snapshot import SnapshotBuffers
from finetune_trainer.storage import NotFoundError, Storage, open_storage

log = logging.getLogger(__name__)

METRIC_MODES = ("max", "min")


@dataclass
class SaveStats:
    """Timings and sizes of one save on one rank, for metrics (``on_saved`` callback, ``last_stats``)."""

    step: int
    rank: int
    blocked_seconds: float = 0.0  # how long save() held the training loop (incl. waiting for the previous upload)
    wait_seconds: float = 0.0  # of which: waiting for the previous upload
    snapshot_seconds: float = 0.0  # of which: copying the state to CPU memory
    upload_seconds: float = 0.0  # background: serialize + hash + upload + commit
    transfer_seconds: float = 0.0  # of upload_seconds: in storage put calls
    bytes: int = 0  # bytes this rank uploaded
    committed: bool = False  # rank 0: the manifest is written
    objects: list[dict] = field(default_factory=list)


def _lower_priority(nice: int) -> None:
    """Raise this thread's niceness (Linux: per thread, inherited by threads it starts)."""
    if nice > 0 and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


class CheckpointManager(CheckpointLoading):
    """Save, find, load and prune checkpoints under ``url`` for one rank of a (possibly distributed) job.

    Args:
        url: base URL (``s3://bucket/prefix``, ``file:///path`` or a path).
        rank, world_size: this process's place in the job; every rank calls ``save()`` at the same steps.
        keep_last: committed checkpoints to keep; plus the best by metric when ``keep_best``.
        metric_mode: ``max`` or ``min``: which metric value is best.
        staging_dir: local scratch for serialized files (default: a temporary directory).
        storage: an opened storage (default: ``open_storage(url)``).
        on_saved: called with :class:`SaveStats` once a save's upload finished (from the upload thread).
        commit_timeout_s: how long rank 0 waits for the other ranks' uploads before failing the save.
        upload_nice: niceness added to the upload thread (and the transfer threads it starts), so that where
            CPU is short the training loop wins; 0 leaves it alone.
    """

    def __init__(
        self,
        url: str,
        *,
        rank: int = 0,
        world_size: int = 1,
        keep_last: int = 2,
        keep_best: bool = True,
        metric_mode: str = "max",
        staging_dir: Path | None = None,
        storage: Storage | None = None,
        on_saved: Callable[[SaveStats], None] | None = None,
        commit_timeout_s: float = 600.0,
        poll_interval_s: float = 0.2,
        upload_nice: int = 10,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise CheckpointError(f"checkpoint rank {rank} / world_size {world_size}: expected 0 <= rank < world_size")
        if keep_last < 1:
            raise CheckpointError(f"checkpoint keep_last={keep_last}: expected at least 1")
        if metric_mode not in METRIC_MODES:
            raise CheckpointError(f"checkpoint metric_mode={metric_mode!r}: expected 'max' or 'min'")
        self.storage = storage if storage is not None else open_storage(url)
        self.url = self.storage.url
        self.rank, self.world_size = rank, world_size
        self.keep_last, self.keep_best, self.metric_mode = keep_last, keep_best, metric_mode
        self.on_saved = on_saved
        self.commit_timeout_s, self.poll_interval_s = commit_timeout_s, poll_interval_s
        if staging_dir is None:
            self.staging = Path(tempfile.mkdtemp(prefix="finetune-ckpt-"))
            # Removed by close(), or when the manager is garbage collected without one.
            self._cleanup: weakref.finalize | None = weakref.finalize(self, shutil.rmtree, self.staging, True)
        else:
            self.staging = Path(staging_dir) / f"rank-{rank:05d}"
            self.staging.mkdir(parents=True, exist_ok=True)
            self._cleanup = None
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="checkpoint-upload", initializer=_lower_priority, initargs=(upload_nice,)
        )
        self._pending: Future | None = None
        self._buffers = SnapshotBuffers()
        self._verified: dict[str, dict[str, Path]] = {}  # prefix -> downloaded, verified files
        self._manifests: dict[int, dict] = {}  # step -> manifest, for retention
        self.last_stats: SaveStats | None = None

    def __repr__(self) -> str:
        return f"CheckpointManager({self.url!r}, rank={self.rank}, world_size={self.world_size})"

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ save

    def save(
        self,
        step: int,
        state: dict[str, Any],
        *,
        rank_state: dict[str, Any] | None = None,
        metric: float | None = None,
        blocking: bool = False,
    ) -> SaveStats:
        """Checkpoint ``step``: a collective call, made by every rank at the same step.

        Only rank 0 writes ``state`` (identical on all ranks under DDP); each rank writes its own
        ``rank_state``. Returns this save's stats; with ``blocking=False`` the upload fields fill in when
        the background upload ends.

        Raises:
            CheckpointError / StorageError: the previous background save failed (raised once, here or in
            ``wait()``), or with ``blocking=True`` this one did.
        """
        if step < 0:
            raise CheckpointError(f"checkpoint step {step}: expected >= 0")
        if metric is not None and not math.isfinite(metric):
            log.warning("checkpoint step %d: metric %r is not finite; saved without a metric", step, metric)
            metric = None
        start = time.perf_counter()
        self.wait()
        stats = SaveStats(step=step, rank=self.rank, wait_seconds=time.perf_counter() - start)
        save_id = self._save_id()
        t = time.perf_counter()
        lent: list = []
        state_copy = self._buffers.snapshot(state, lent) if self.rank == 0 else None
        rank_copy = self._buffers.snapshot(rank_state, lent) if rank_state is not None else None
        if any(key[2] for key, _ in lent):
            import torch

            torch.cuda.synchronize()  # the device-to-host copies were asynchronous
        stats.snapshot_seconds = time.perf_counter() - t

        def job() -> SaveStats:
            try:
                self._upload(step, save_id, state_copy, rank_copy, metric, stats)
            finally:
                self._buffers.release(lent)
            if blocking:
                stats.blocked_seconds = time.perf_counter() - start
            self.last_stats = stats
            if self.on_saved is not None:
                self.on_saved(stats)
            return stats

        if blocking:
            job()
        else:
            stats.blocked_seconds = time.perf_counter() - start
            self._pending = self._executor.submit(job)
        return stats

    @property
    def busy(self) -> bool:
        """True while a background upload is in flight (a save() now would wait for it)."""
        return self._pending is not None and not self._pending.done()

    def wait(self) -> None:
        """Wait for the in-flight upload, if any, and re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Finish the in-flight upload, stop the upload thread and remove local scratch files."""
        try:
            self.wait()
        finally:
            self._executor.shutdown(wait=True)
            if self._cleanup is not None:
                self._cleanup()

    def _save_id(self) -> str:
        """One id shared by all ranks of this save (rank 0's, broadcast on the caller's thread)."""
        token = uuid.uuid4().hex
        if self.world_size == 1:
            return token
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise CheckpointError(
                f"checkpoint with world_size={self.world_size} needs torch.distributed initialised "
                "(init_process_group) before save()"
            )
        box = [token]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _upload(
        self, step: int, save_id: str, state: Any, rank_state: Any, metric: float | None, stats: SaveStats
    ) -> None:
        start = time.perf_counter()
        prefix = checkpoint_prefix(step)
        objects = []
        if state is not None:
            objects.append(self._put_object(prefix, STATE, state, stats))
        if rank_state is not None:
            objects.append(self._put_object(prefix, rank_file(self.rank), rank_state, stats))
        if self.rank == 0:
            objects += self._gather_markers(prefix, save_id)
            manifest = {
                "format": FORMAT,
                "step": step,
                "metric": metric,
                "world_size": self.world_size,
                "save_id": save_id,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "objects": objects,
            }
            self.storage.put_bytes(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
            self._manifests[step] = manifest
            stats.committed = True
            log.info(
                "checkpoint %s/%s committed: %d objects, %.1f MB from this rank in %.1fs",
                self.url, prefix, len(objects), stats.bytes / 1e6, time.perf_counter() - start,
            )  # fmt: skip
            self._retain()
        else:
            marker = {"save_id": save_id, "rank": self.rank, "objects": objects}
            self.storage.put_bytes(f"{prefix}/{done_marker(self.rank)}", json.dumps(marker).encode())
        stats.objects = objects
        stats.upload_seconds = time.perf_counter() - start

    def _put_object(self, prefix: str, name: str, obj: Any, stats: SaveStats) -> dict:
        import torch

        local = self.staging / f"{prefix}-{name}"
        try:
            with open(local, "wb") as f:
                writer = HashingWriter(f)
                torch.save(obj, writer)
            t = time.perf_counter()
            self.storage.put_file(local, f"{prefix}/{name}")
            stats.transfer_seconds += time.perf_counter() - t
        finally:
            local.unlink(missing_ok=True)
        stats.bytes += writer.size
        return {"key": name, "size": writer.size, "sha256": writer.sha.hexdigest()}

    def _gather_markers(self, prefix: str, save_id: str) -> list[dict]:
        """Rank 0: wait until every other rank has uploaded its objects for this save; return them."""
        waiting = set(range(1, self.world_size))
        objects: list[dict] = []
        deadline = time.monotonic() + self.commit_timeout_s
        while waiting:
            for rank in sorted(waiting):
                try:
                    marker = json.loads(self.storage.get_bytes(f"{prefix}/{done_marker(rank)}"))
                except NotFoundError:
                    continue
                if marker.get("save_id") == save_id:  # else: left by an earlier attempt at this step
                    objects += marker["objects"]
                    waiting.discard(rank)
            if waiting:
                if time.monotonic() > deadline:
                    raise CheckpointError(
                        f"checkpoint {self.url}/{prefix}: rank(s) {sorted(waiting)} did not finish uploading "
                        f"within {self.commit_timeout_s:.0f}s; see their logs (upload error or crash). "
                        "The checkpoint stays uncommitted."
                    )
                time.sleep(self.poll_interval_s)
        return objects

    # ------------------------------------------------------------------------------------------- retention

    def _metric(self, step: int) -> float | None:
        if step not in self._manifests:
            try:
                self._manifests[step] = json.loads(self.storage.get_bytes(f"{checkpoint_prefix(step)}/{MANIFEST}"))
            except (NotFoundError, ValueError):
                return None
        metric = self._manifests[step].get("metric")
        return float(metric) if isinstance(metric, int | float) else None

    def _retain(self) -> None:
        """Rank 0, after a commit: keep the last ``keep_last`` + the best; drop older uncommitted prefixes."""
        groups = scan(self.storage)
        drop = retention_drops(groups, self._metric, self.keep_last, self.keep_best, self.metric_mode)
        for step in sorted(drop):
            prefix = checkpoint_prefix(step)
            names = groups[step]
            # Manifest first: a half-deleted checkpoint then reads as uncommitted, never as corrupt-but-valid.
            if MANIFEST in names:
                self.storage.delete([f"{prefix}/{MANIFEST}"])
            self.storage.delete(f"{prefix}/{n}" for n in sorted(names - {MANIFEST}))
            self._manifests.pop(step, None)
            log.info("checkpoint %s/%s deleted by retention", self.url, prefix)
