"""The FineTuneJob status as a typed model: the CRD's status schema is generated from it, and every status the
operator writes is validated by it, so a misspelt field or a value of the wrong type fails a test instead of
being stored, and a NaN or an infinity (which an API server refuses with 400) cannot be held at all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from finetune_trainer.config import Section
from finetune_trainer.contract import ProgressRecord

PENDING, RUNNING, RESTARTING = "Pending", "Running", "Restarting"
EXPORTING, PUBLISHING = "Exporting", "Publishing"
SUCCEEDED, FAILED, SUSPENDED = "Succeeded", "Failed", "Suspended"
QUEUED = "Queued"
PHASES = (QUEUED, PENDING, RUNNING, RESTARTING, EXPORTING, PUBLISHING, SUCCEEDED, FAILED, SUSPENDED)
CONDITION_TYPES = ("Queued", "Training", "Publishing", "Suspended", "Succeeded", "Failed")

Phase = Literal["Queued", "Pending", "Running", "Restarting", "Exporting", "Publishing", "Succeeded", "Failed",
                "Suspended"]  # fmt: skip
ConditionType = Literal["Queued", "Training", "Publishing", "Suspended", "Succeeded", "Failed", "Stalled"]
STALLED = "Stalled"  # not a phase: set beside Running while the step counter does not move
Finite = Annotated[float, Field(allow_inf_nan=False)]
TIME = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"
Time = Annotated[str, Field(pattern=TIME)]


class Condition(Section):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: Time | None = None
    observed_generation: int | None = None


class Progress(Section):
    stage: Literal["pretraining", "finetuning"] | None = Field(
        None, description="With spec.pretraining: the stage running (its own step count); absent otherwise."
    )
    step: int = Field(0, ge=0)
    total_steps: int | None = Field(None, ge=0)
    epoch: Finite = 0.0
    percent: Finite = Field(0.0, ge=0)
    eta_seconds: Finite | None = None
    samples_per_second: Finite | None = None


class ModelStatus(Section):
    repository: str
    name: str
    version: int = Field(ge=1)
    endpoint: str | None = None
    ready: bool = False


class MemberStatus(Section):
    """One ensemble member: what trains it, how far it is, its latest metrics."""

    index: int = Field(ge=0)
    seed: int = Field(ge=0)
    model: str
    step: int | None = Field(None, ge=0)
    percent: Finite | None = Field(None, ge=0)
    metrics: dict[str, Finite] = Field(default_factory=dict, description="Its latest training and evaluation metrics.")


class EnsembleStatus(Section):
    """The members of spec.ensemble and, once combined, the served ensemble's own held-out metrics."""

    method: str
    members: list[MemberStatus] = Field(default_factory=list)
    metrics: dict[str, Finite] = Field(
        default_factory=dict, description="The combined model on the hold-outs: validation_<metric>, test_<metric>."
    )


class CheckpointStatus(Section):
    """The newest committed checkpoint, as the trainer reports it (a restart resumes from it)."""

    step: int = Field(ge=0)
    time: Time
    uri: str


class Interruption(Section):
    """One restart of the worker group: why, where the old attempt was, and how many steps the next redoes."""

    attempt: int = Field(ge=1, description="The attempt that stopped.")
    reason: str
    time: Time
    stage: Literal["pretraining", "finetuning"] | None = None
    step: int = Field(0, ge=0, description="The last step the stopped attempt reported.")
    checkpoint_step: int | None = Field(
        None, ge=0, description="The step the next attempt resumed from (0: from the start); until it says, the "
        "newest checkpoint known when it stopped."
    )  # fmt: skip
    steps_redone: int | None = Field(
        None, ge=0, description="step - checkpointStep, once the next attempt said where it resumed (absent for "
        "the pretraining stage, which keeps its own checkpoints)."
    )  # fmt: skip


INTERRUPTIONS_KEPT = 10


class FineTuneJobStatus(Section):
    """Observed state, written by the operator only."""

    phase: Phase = "Pending"
    reason: str | None = None
    message: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    storage: str | None = Field(
        None, description="This job's checkpoints, progress and default output: <checkpoint.storage>/<namespace>/"
        "<name>/<uid>."
    )  # fmt: skip
    progress: Progress | None = None
    metrics: dict[str, Finite] = Field(default_factory=dict, description="Latest training and evaluation metrics.")
    restarts: int = Field(0, ge=0, description="Worker-group restarts after failures; spent against backoffLimit.")
    disruptions: int = Field(
        0, ge=0, description="Worker-group restarts after an eviction, a drain or a lost node: not spent against "
        "backoffLimit."
    )  # fmt: skip
    attempt: int = Field(0, ge=0)
    advice: str | None = Field(None, description="What to do about the current reason, where something can be done.")
    last_checkpoint: CheckpointStatus | None = None
    interruptions: list[Interruption] = Field(
        default_factory=list, max_length=INTERRUPTIONS_KEPT,
        description=f"The last {INTERRUPTIONS_KEPT} worker-group restarts (failures and disruptions).",
    )  # fmt: skip
    steps_redone: int = Field(0, ge=0, description="Steps trained again after restarts, over the job's life.")
    active_seconds: Finite = Field(
        0.0, ge=0, description="Time spent admitted (not Queued or Suspended) before active_since: what "
        "activeDeadlineSeconds counts."
    )  # fmt: skip
    active_since: Time | None = Field(None, description="When the job last became admitted; absent while queued.")
    last_progress_time: Time | None = Field(
        None, description="When the step counter last moved while Running (what the Stalled condition measures)."
    )
    start_time: Time | None = None
    completion_time: Time | None = None
    model: ModelStatus | None = None
    retry_after: Time | None = Field(None, description="Earliest time the next worker group or export try may start.")
    ensemble: EnsembleStatus | None = None
    export_attempt: int = Field(0, ge=0)
    export_start_time: Time | None = None


# --- conditions and times, as the phase machine writes them ---------------------------------------------------


def timestamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(raw: str | None) -> datetime | None:
    if not raw:
        return None
    return datetime.strptime(raw, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


CONDITIONS = {
    # phase -> (condition type that is True, reason); every other type of this list turns False.
    QUEUED: ("Queued", "Queued"),
    PENDING: ("Training", "Starting"),
    RUNNING: ("Training", "Running"),
    RESTARTING: ("Training", "Restarting"),
    EXPORTING: ("Publishing", "Exporting"),
    PUBLISHING: ("Publishing", "Publishing"),
    SUCCEEDED: ("Succeeded", "Succeeded"),
    FAILED: ("Failed", "Failed"),
    SUSPENDED: ("Suspended", "Suspended"),
}


def set_condition(status: dict, kind: str, value: bool, reason: str, message: str, now: str, generation: int) -> None:
    conditions = status.setdefault("conditions", [])
    new = "True" if value else "False"
    for cond in conditions:
        if cond.get("type") == kind:
            if cond.get("status") != new:
                cond["lastTransitionTime"] = now
            cond.update(status=new, reason=reason, message=message, observedGeneration=generation)
            return
    conditions.append(
        {"type": kind, "status": new, "reason": reason, "message": message, "lastTransitionTime": now,
         "observedGeneration": generation}
    )  # fmt: skip


def set_phase(status: dict, phase: str, reason: str, message: str, now: str, generation: int) -> None:
    """``phase`` with its reason and message, every condition as that phase sets it, and the completion time
    once the phase is terminal."""
    status.update(phase=phase, reason=reason, message=message)
    active, cond_reason = CONDITIONS[phase]
    for kind in CONDITION_TYPES:
        on = kind == active
        set_condition(status, kind, on, reason if on else cond_reason, message if on else "", now, generation)
    if phase in (SUCCEEDED, FAILED) and not status.get("completionTime"):
        status["completionTime"] = now


def progress_fields(record: ProgressRecord) -> tuple[dict[str, Any], dict[str, float]]:
    """``status.progress`` and the metrics ``status.metrics`` takes from a trainer's progress record."""
    p = record.to_dict()  # finite numbers only
    fields = ("stage", "step", "totalSteps", "epoch", "percent", "etaSeconds")
    progress = {k: p[k] for k in fields if p.get(k) is not None}
    metrics = p["metrics"]
    if "samples_per_second" in metrics:
        progress["samplesPerSecond"] = round(metrics["samples_per_second"], 2)
    kept = {k: round(v, 6) for k, v in metrics.items() if k not in ("eval", "samples_per_second")}
    return progress, kept


def legacy_layout(status: dict | None) -> bool:
    """Whether an operator from before the uid-keyed storage layout started this job (it has a phase but no
    ``status.storage``): its checkpoints stay under ``<storage>/<namespace>/<name>``."""
    status = status or {}
    return bool(status.get("phase")) and not status.get("storage")


_FIELDS = {field.alias or name for name, field in FineTuneJobStatus.model_fields.items()}


def read(raw: Any) -> dict[str, Any]:
    """A status as stored, less the fields this model does not know (written by another operator version)."""
    return {k: v for k, v in raw.items() if k in _FIELDS} if isinstance(raw, dict) else {}


def checked(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` validated by the model and in its JSON form, with exactly the fields it sets.

    Raises:
        pydantic.ValidationError: a field the model does not know or a value it cannot hold (NaN among them).
    """
    model = FineTuneJobStatus.model_validate(status)
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)
