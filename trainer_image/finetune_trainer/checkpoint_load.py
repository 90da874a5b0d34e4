"""Finding and loading committed checkpoints: the read side of :class:`~finetune_trainer.checkpoint.CheckpointManager`.

A checkpoint is taken only once its manifest is there and every object it lists matches its size and sha256;
newer checkpoints that fail the check are skipped with a warning naming them, never resumed from.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from finetune_trainer.checkpoint_format import (
    MANIFEST,
    STATE,
    CheckpointInfo,
    CorruptCheckpointError,
    checkpoint_prefix,
    download_verified,
    rank_file,
    read_manifest,
    scan,
    torch_load,
)
from finetune_trainer.storage import Storage

log = logging.getLogger(__name__)


class CheckpointLoading:
    """``latest``, ``at`` and ``load`` for one rank; the manager supplies storage, URL, rank and staging folder."""

    storage: Storage
    url: str
    rank: int
    staging: Path
    _verified: dict[str, dict[str, Path]]  # prefix -> downloaded, verified files

    def uri(self, step: int) -> str:
        """Where the checkpoint of ``step`` lives (what status.lastCheckpoint.uri shows)."""
        return f"{self.url}/{checkpoint_prefix(step)}"

    def latest(self) -> CheckpointInfo | None:
        """The newest checkpoint whose manifest verifies (size and sha256 of every object), or None.

        Newer checkpoints without a manifest or with a bad object are skipped with a warning naming them.
        Storage errors (e.g. S3 unreachable) are raised, never taken for a missing checkpoint.
        """
        self._drop_verified()
        groups = scan(self.storage)
        for step in sorted(groups, reverse=True):
            prefix = checkpoint_prefix(step)
            if MANIFEST not in groups[step]:
                log.warning(
                    "checkpoint %s/%s has no manifest (interrupted or in-flight save); skipping", self.url, prefix
                )
                continue
            try:
                info = read_manifest(self.storage, self.url, step)
                self._verify(info)
                return info
            except CorruptCheckpointError as e:
                log.warning("%s; skipping it", e)
        return None

    def at(self, step: int) -> CheckpointInfo | None:
        """The committed checkpoint of ``step`` (e.g. the best one, which retention keeps), or None."""
        if MANIFEST not in scan(self.storage).get(step, set()):
            return None
        try:
            return read_manifest(self.storage, self.url, step)
        except CorruptCheckpointError as e:
            log.warning("%s; skipping it", e)
            return None

    def load(self, info: CheckpointInfo, map_location: Any = "cpu") -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Load ``(state, this rank's rank_state)``.

        ``state`` goes to ``map_location``; ``rank_state`` always loads to CPU (RNG states must be CPU tensors).
        rank_state is None when the checkpoint has none for this rank (e.g. it was saved with fewer ranks).
        """
        names = {obj["key"] for obj in info.manifest["objects"]}
        if STATE not in names:
            raise CorruptCheckpointError(f"checkpoint {self.url}/{info.key}: manifest lists no {STATE}")
        wanted = {STATE} | ({rank_file(self.rank)} & names)
        files = self._verified.get(info.key)
        if files is None or not wanted <= files.keys():
            files = self._verify(info, wanted)
        try:
            state = torch_load(files[STATE], map_location)
            rank_state = torch_load(files[rank_file(self.rank)], "cpu") if rank_file(self.rank) in files else None
        except Exception as e:
            raise CorruptCheckpointError(f"checkpoint {self.url}/{info.key}: cannot be loaded: {e}") from e
        finally:
            self._drop_verified()
        return state, rank_state

    def _verify(self, info: CheckpointInfo, names: set[str] | None = None) -> dict[str, Path]:
        """Download and check the manifest's objects (or ``names`` of them); keep the files this rank loads."""
        folder = self.staging / "verified" / info.key
        files = download_verified(self.storage, self.url, info, folder, {STATE, rank_file(self.rank)}, names)
        self._verified[info.key] = files
        return files

    def _drop_verified(self) -> None:
        for prefix in list(self._verified):
            shutil.rmtree(self.staging / "verified" / prefix, ignore_errors=True)
            del self._verified[prefix]
        with contextlib.suppress(OSError):
            (self.staging / "verified").rmdir()
