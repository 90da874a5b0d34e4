"""An ensemble job's status, from what its members and its combine step left in the job's storage (pure).

Each member's trainer writes ``<job folder>/members/<k>/progress.json``; the export pod's combine step writes
``<job folder>/ensemble/metrics.json``. The job's own progress is its slowest member's.
"""

from __future__ import annotations

from typing import Any

from finetune_operator import api
from finetune_operator.ensemble_steps import members
from finetune_trainer import contract

METRICS_FILE = "metrics.json"
HELD_OUT = ("validation", "test")


def progress_keys(job: api.FineTuneJob, uid: str | None) -> list[str]:
    """Each member's progress record, relative to the storage root (none without an ensemble)."""
    name, ns = job.metadata.name, job.metadata.namespace
    return [contract.progress_key(ns, name, contract.member_uid(uid, m.index)) for m in members(job)]


def metrics_key(job: api.FineTuneJob, uid: str | None) -> str:
    """The combined model's metrics, relative to the storage root."""
    return f"{contract.job_key(job.metadata.namespace, job.metadata.name, uid)}/{contract.ENSEMBLE_METRICS}/" \
           f"{METRICS_FILE}"  # fmt: skip


def slowest(records: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The job's progress: the member furthest behind (one that has not reported yet counts as 0 %)."""
    if not records or any(r is None for r in records):
        return None
    return min(records, key=lambda r: r.get("percent") or 0.0)


def summary(job: api.FineTuneJob, records: list[dict[str, Any] | None], combined: dict[str, Any] | None,
            previous: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """``status.ensemble``: every member with its progress and latest metrics, and the combined model's held-out
    metrics once the combine step wrote them; what was known before is kept where nothing new was read."""
    assert job.spec.ensemble is not None
    before = {m.get("index"): m for m in (previous or {}).get("members", [])}
    out_members = []
    for m, record in zip(members(job), records + [None] * (len(members(job)) - len(records)), strict=True):
        entry = dict(before.get(m.index) or {"index": m.index, "seed": m.seed, "model": m.model.name})
        if record is not None:
            entry.update(step=record["step"], percent=round(record.get("percent") or 0.0, 2))
            kept = {k: round(v, 6) for k, v in (record.get("metrics") or {}).items() if k != "eval"}
            entry["metrics"] = {**entry.get("metrics", {}), **kept}
        out_members.append(entry)
    status = {"method": str(job.spec.ensemble.method), "members": out_members}
    metrics = flat_metrics(combined) if combined else (previous or {}).get("metrics")
    if metrics:
        status["metrics"] = metrics
    return status


def flat_metrics(combined: dict[str, Any]) -> dict[str, float]:
    """``validation_accuracy``, ``test_f1_macro``...: the finite numbers of each held-out split."""
    out = {}
    for split in HELD_OUT:
        for k, v in (combined.get(split) or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf"):
                out[f"{split}_{k}"] = round(float(v), 6)
    return out
