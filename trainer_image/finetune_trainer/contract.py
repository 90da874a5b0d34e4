"""What the operator and the trainer must agree on, in one torch-free module that both import.

- Storage layout: a job's checkpoints, ``progress.json`` and default model output live under
  ``<checkpoint.storage>/<namespace>/<name>/<uid>``, keyed by the FineTuneJob's uid so that a job created again
  under an old name starts fresh. Jobs started before the uid existed in the layout (and local runs, which have
  no uid) keep ``<checkpoint.storage>/<namespace>/<name>``.
- Progress: the JSON record rank 0 rewrites there (``ProgressRecord``); only finite numbers cross.
- Termination message: the lines a finished container leaves at ``/dev/termination-log`` (``error:``,
  ``exitcode:``, ``published:``); Kubernetes copies it into the pod's status, the operator parses it.
- Exit codes and what each means to the operator.
- Environment variable names set on one side and read on the other.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

# --- exit codes ---------------------------------------------------------------------------------------------

EXIT_OK = 0
EXIT_FAILED = 1  # a crash, or a failure a retry may fix (storage or Triton down)
EXIT_BAD_INPUT = 2  # bad data, spec or model: retrying cannot help, the job fails at once
EXIT_STORAGE = 3  # storage unreachable or refused: one line, retryable once it is fixed
EXIT_KILLED = 137  # 128 + SIGKILL
EXIT_PREEMPTED = 143  # 128 + SIGTERM: the trainer wrote a final checkpoint and stopped
PERMANENT_EXITS = frozenset({EXIT_BAD_INPUT})
# Stopped by a signal: as a process's exit status (128 + n) or as torchrun reports a worker (-n).
SIGNAL_EXITS = frozenset({EXIT_KILLED, EXIT_PREEMPTED, -9, -15})

# --- environment variables ----------------------------------------------------------------------------------

ENV_TERMINATION_LOG = "FINETUNE_TERMINATION_LOG"  # where the termination message goes (default TERMINATION_LOG)
ENV_JOB = "FINETUNE_JOB"
ENV_ATTEMPT = "FINETUNE_ATTEMPT"
ENV_NODE_INDEX = "FINETUNE_NODE_INDEX"
# An Indexed Job's pod index (also its label batch.kubernetes.io/job-completion-index); read before ENV_NODE_INDEX.
ENV_JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
# The pod's own IP (downward API status.podIP): the address the launcher gives torchrun as --local-addr, so the
# workers' MASTER_ADDR needs no DNS.
ENV_POD_IP = "FINETUNE_POD_IP"
ENV_S3_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_S3_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_S3_ENDPOINT = "AWS_ENDPOINT_URL"
ENV_S3_REGION = "AWS_REGION"
ENV_S3_ADDRESSING_STYLE = "FINETUNE_S3_ADDRESSING_STYLE"
# The keys of the Secret that spec.checkpoint.s3.credentialsSecret names.
SECRET_ACCESS_KEY = "accessKey"
SECRET_SECRET_KEY = "secretKey"

# --- storage layout -----------------------------------------------------------------------------------------

PROGRESS_FILE = "progress.json"
MODEL_OUTPUT = "model-output"
# spec.pretraining's stage keeps its own checkpoints, its trained encoder and its completion marker here, under
# the job's folder: a restart finds which stage it is in from what is committed.
PRETRAINING_DIR = "pretraining"
MEMBERS_DIR = "members"  # an ensemble's members, each in <job folder>/members/<index> and <output>/members/<index>
ENSEMBLE_METRICS = "ensemble"  # <job folder>/ensemble/metrics.json: the combined model's held-out metrics


def job_key(namespace: str | None, name: str, uid: str | None) -> str:
    """A job's folder relative to its storage root: ``<namespace>/<name>/<uid>``, or ``<namespace>/<name>``
    without a uid (local runs, and jobs an older operator started)."""
    key = f"{namespace or 'default'}/{name}"
    return f"{key}/{uid}" if uid else key


def member_uid(uid: str | None, index: int) -> str:
    """What stands in the uid's place of ``job_key`` for ensemble member ``index``: its checkpoints and progress
    live in ``<job folder>/members/<index>``, so each member resumes on its own."""
    return f"{uid}/{MEMBERS_DIR}/{index}" if uid else f"{MEMBERS_DIR}/{index}"


def job_prefix(root: str, namespace: str | None, name: str, uid: str | None) -> str:
    """The URL of a job's folder under the storage root ``root`` (s3://bucket/prefix or a path)."""
    return f"{root.rstrip('/')}/{job_key(namespace, name, uid)}"


def progress_key(namespace: str | None, name: str, uid: str | None) -> str:
    """Where a job's progress record lives, relative to its storage root."""
    return f"{job_key(namespace, name, uid)}/{PROGRESS_FILE}"


# --- progress -----------------------------------------------------------------------------------------------

STAGE_PRETRAINING = "pretraining"  # spec.pretraining's masked-LM stage
STAGE_FINETUNING = "finetuning"  # the classifier, after a pretraining stage
STAGES = (STAGE_PRETRAINING, STAGE_FINETUNING)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class CheckpointRecord:
    """The newest committed checkpoint a trainer knows of: the one it resumed from or the last it saved."""

    step: int
    time: float
    uri: str

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "time": self.time, "uri": self.uri}

    @classmethod
    def from_dict(cls, raw: Any) -> CheckpointRecord | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("step"), int) or not isinstance(raw.get("uri"), str):
            return None
        when = _finite(raw.get("time"))
        return cls(step=raw["step"], time=when if when is not None else 0.0, uri=raw["uri"])


@dataclass(frozen=True)
class ProgressRecord:
    """What rank 0 reports while training. Non-finite numbers (a diverged loss, ``maxGradNorm: null``'s NaN
    gradient norm) are left out on both sides: JSON has no NaN, and an API server refuses a status holding one."""

    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    percent: float = 0.0
    eta_seconds: float | None = None
    phase: str = "training"
    metrics: dict[str, float] = field(default_factory=dict)
    time: float | None = None
    stage: str | None = None  # one of STAGES for a job with stages; None for a plain fine-tune
    attempt: int | None = None  # the worker group's attempt (ENV_ATTEMPT) that wrote the record
    resumed_from: int | None = None  # the step this attempt resumed from (0: it started afresh)
    checkpoint: CheckpointRecord | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", {k: v for k, v in self.metrics.items() if _finite(v) is not None})
        for name in ("epoch", "percent"):
            object.__setattr__(self, name, _finite(getattr(self, name)) or 0.0)
        object.__setattr__(self, "eta_seconds", _finite(self.eta_seconds))
        if self.stage not in STAGES:
            object.__setattr__(self, "stage", None)

    def to_dict(self) -> dict[str, Any]:
        stage = {"stage": self.stage} if self.stage else {}
        return {
            **stage,
            "phase": self.phase,
            "step": self.step,
            "totalSteps": self.total_steps,
            "epoch": self.epoch,
            "percent": self.percent,
            "etaSeconds": self.eta_seconds,
            "metrics": dict(self.metrics),
            "time": self.time,
            **({"attempt": self.attempt} if self.attempt is not None else {}),
            **({"resumedFrom": self.resumed_from} if self.resumed_from is not None else {}),
            **({"checkpoint": self.checkpoint.to_dict()} if self.checkpoint is not None else {}),
        }

    def to_json(self, indent: int | None = None) -> bytes:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False).encode()

    @classmethod
    def from_dict(cls, raw: Any) -> ProgressRecord | None:
        """Read a record as written by any trainer version; None when ``raw`` is not one."""
        if not isinstance(raw, dict) or not isinstance(raw.get("step"), int):
            return None
        total = raw.get("totalSteps")
        metrics = raw.get("metrics")
        return cls(
            step=raw["step"],
            total_steps=total if isinstance(total, int) and not isinstance(total, bool) else None,
            epoch=_finite(raw.get("epoch")) or 0.0,
            percent=_finite(raw.get("percent")) or 0.0,
            eta_seconds=_finite(raw.get("etaSeconds")),
            phase=str(raw.get("phase") or "training"),
            metrics={k: float(v) for k, v in metrics.items() if _finite(v) is not None}
            if isinstance(metrics, dict)
            else {},
            time=_finite(raw.get("time")),
            stage=raw.get("stage") if isinstance(raw.get("stage"), str) else None,
            attempt=_int(raw.get("attempt")),
            resumed_from=_int(raw.get("resumedFrom")),
            checkpoint=CheckpointRecord.from_dict(raw.get("checkpoint")),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> ProgressRecord | None:
        try:
            return cls.from_dict(json.loads(raw))  # older trainers wrote NaN and Infinity tokens: dropped here
        except ValueError:
            return None


# --- termination message ------------------------------------------------------------------------------------

TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps

_ERROR = re.compile(r"^error: (.+)$", re.M)
_EXIT = re.compile(r"^exitcode: (-?\d+)$", re.M)
_PUBLISHED = re.compile(r"^published: (\{.*\})$", re.M)


@dataclass(frozen=True)
class Termination:
    """What a termination message (or a log tail holding the same lines) says."""

    error: str | None = None
    exit_code: int | None = None
    published: dict[str, Any] | None = None


def write_termination(*lines: str) -> bool:
    """Write ``lines`` as the termination message; False where the container has no such file (a local run)."""
    path = os.environ.get(ENV_TERMINATION_LOG, TERMINATION_LOG)
    if not (os.path.exists(path) and os.access(path, os.W_OK)):
        return False
    text = "\n".join(lines)
    if len(text.encode()) > TERMINATION_LIMIT:  # keep the structured last lines; shorten the free text before
        tail = "".join("\n" + line for line in lines[1:])
        text = lines[0].encode()[: TERMINATION_LIMIT - len(tail.encode()) - 3].decode(errors="ignore") + "..." + tail
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def read_termination() -> Termination:
    """What this container's termination message says so far (empty where it has none)."""
    path = os.environ.get(ENV_TERMINATION_LOG, TERMINATION_LOG)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_termination(f.read())
    except OSError:
        return Termination()


def fail(error: object, exit_code: int, *, first: bool = False) -> int:
    """Report ``error`` as one ``error:`` line on stderr and in the termination message; return ``exit_code``.

    With ``first``, a termination message that already holds an error is kept: when one rank crashes the
    others of its pod fail after it (a collective with a dead peer), and the first error is the cause.
    """
    print(f"error: {error}", file=sys.stderr)
    if not (first and read_termination().error):
        write_termination(f"error: {' '.join(str(error).split())}", f"exitcode: {exit_code}")  # one line
    return exit_code


def published_line(name: str, version: int, reused: bool) -> str:
    return "published: " + json.dumps({"name": name, "version": version, "reused": reused}, separators=(",", ":"))


def parse_termination(message: str | None) -> Termination:
    """The last error, exit code and publication in ``message``; fields it does not hold are None."""
    text = message or ""
    errors, codes, published = _ERROR.findall(text), _EXIT.findall(text), _PUBLISHED.findall(text)
    record = None
    if published:
        try:
            loaded = json.loads(published[-1])
        except ValueError:
            loaded = None
        if isinstance(loaded, dict) and isinstance(loaded.get("version"), int):
            record = loaded
    return Termination(
        error=errors[-1].strip() if errors else None,
        exit_code=int(codes[-1]) if codes else None,
        published=record,
    )


# --- Triton address -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TritonAddress:
    """``serving.tritonUrl`` as tritonclient wants it: a protocol and ``host:port``."""

    protocol: str  # http | https | grpc
    address: str

    @property
    def ssl(self) -> bool:
        return self.protocol == "https"


def triton_address(url: str) -> TritonAddress:
    """``host:port`` (HTTP), ``http://``, ``https://`` or ``grpc://host:port``; a path after the host is dropped."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    return TritonAddress(parsed.scheme or "http", parsed.netloc)
