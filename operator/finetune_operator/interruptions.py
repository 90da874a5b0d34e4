"""What each restart of a worker group cost: ``status.interruptions``, ``status.stepsRedone`` and
``status.lastCheckpoint``, kept from the phase machine's restarts and the trainer's progress records.

A restart is recorded when the operator decides it, with the last step the stopped attempt reported and the
newest checkpoint known then. The steps it redoes are settled once the next attempt's first record says which
step it resumed from (``resumedFrom``), since the stopped group's final checkpoint (written on SIGTERM) may be
read after the decision. Pure: each function mutates the status it is given and returns the steps it settled.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from finetune_operator.status import INTERRUPTIONS_KEPT, timestamp
from finetune_trainer import contract


def record(status: dict[str, Any], attempt: int, reason: str, now: str) -> int:
    """Record that ``attempt`` stopped for ``reason`` at ``now``; an earlier restart whose next attempt never said
    where it resumed is settled with what was known."""
    entries = status.setdefault("interruptions", [])
    settled = settle(status, entries[-1], None) if entries and "stepsRedone" not in entries[-1] else 0
    progress = status.get("progress") or {}
    entry: dict[str, Any] = {"attempt": attempt, "reason": reason, "time": now, "step": int(progress.get("step") or 0)}
    stage = progress.get("stage")
    if stage:
        entry["stage"] = stage
    if stage != contract.STAGE_PRETRAINING:  # the pretraining stage keeps checkpoints of its own
        entry["checkpointStep"] = int((status.get("lastCheckpoint") or {}).get("step") or 0)
    entries.append(entry)
    del entries[:-INTERRUPTIONS_KEPT]
    return settled


def settle(status: dict[str, Any], entry: dict[str, Any], resumed_from: int | None) -> int:
    """The steps ``entry`` cost: from where the next attempt resumed (else the checkpoint known when it stopped)
    to the last step reached; added to ``status.stepsRedone``."""
    start = resumed_from if resumed_from is not None else entry.get("checkpointStep")
    if start is None:
        return 0  # the pretraining stage: not measured
    redone = max(int(entry.get("step") or 0) - start, 0)
    entry.update(checkpointStep=start, stepsRedone=redone)
    status["stepsRedone"] = int(status.get("stepsRedone") or 0) + redone
    return redone


def read(status: dict[str, Any], progress: contract.ProgressRecord, now: datetime) -> int:
    """``status.lastCheckpoint`` from a progress record, and the last restart settled once the next attempt
    says where it resumed (or its step moved, where the stopped attempt's last record is read late)."""
    ckpt = progress.checkpoint
    last = status.get("lastCheckpoint") or {}
    if ckpt is not None and progress.stage != contract.STAGE_PRETRAINING and ckpt.step >= int(last.get("step") or 0):
        when = datetime.fromtimestamp(ckpt.time, UTC) if ckpt.time else now
        status["lastCheckpoint"] = {"step": ckpt.step, "time": timestamp(when), "uri": ckpt.uri}
    entries = status.get("interruptions") or []
    entry = entries[-1] if entries and "stepsRedone" not in entries[-1] else None
    if entry is None or progress.attempt is None:
        return 0
    if progress.attempt == entry["attempt"]:
        entry["step"] = max(int(entry.get("step") or 0), progress.step)
    elif progress.attempt > entry["attempt"] and progress.resumed_from is not None and progress.stage == entry.get(
        "stage"
    ):  # fmt: skip
        return settle(status, entry, progress.resumed_from)
    return 0
