"""The operator's configuration, read from the environment in one place (nothing else reads os.environ).

| Variable | Default | Meaning |
| --- | --- | --- |
| FINETUNE_NAMESPACES | (all) | Comma-separated namespaces to watch; empty watches the whole cluster. |
| FINETUNE_NAMESPACE | | One namespace to watch (same as FINETUNE_NAMESPACES with one entry). |
| FINETUNE_TRAINER_IMAGE | api.DEFAULT_IMAGE | Image of worker and export pods when a job's template names none. |
| FINETUNE_TRAINER_PYTHON | python | Interpreter the export pod runs. |
| FINETUNE_TRAINER_METRICS_PORT | 9400 | Prometheus port of each worker (0: no metrics port). |
| FINETUNE_DEFAULT_STORAGE | | Checkpoint storage (s3://bucket/prefix) of jobs that set none. |
| FINETUNE_METRICS_PORT | 9090 | Port of the operator's own /metrics (0: off). |
| FINETUNE_METRICS_ADDRESS | 0.0.0.0 | Address the operator's /metrics listens on. |
| FINETUNE_POLL_SECONDS | 10 | How often a running job's progress is read and its children checked. |
| FINETUNE_BACKOFF_SECONDS | 10 | First delay before a failed worker group is restarted; doubles per restart. |
| FINETUNE_BACKOFF_MAX_SECONDS | 300 | Longest restart delay. |
| FINETUNE_PUBLISH_TIMEOUT_SECONDS | 600 | How long the published model may take to become ready in Triton. |
| FINETUNE_TORCHRUN_MAX_RESTARTS | 0 | torchrun's in-pod restarts before the operator restarts the group. |
| FINETUNE_TERMINATION_GRACE_SECONDS | 120 | Time a worker gets after SIGTERM to write its final checkpoint. |
| FINETUNE_NODE_LOSS_GRACE_SECONDS | 90 | How long a failed group waits for a peer still shown Running (a lost node?). |
| FINETUNE_WATCH_TIMEOUT_SECONDS | 300 | Server-side timeout of watch requests (kopf reconnects after it). |
| FINETUNE_PEERING | | kopf peering name for several replicas (one active); empty runs standalone. |
| FINETUNE_PEERING_PRIORITY | (random) | This replica's peering priority; the highest live one is active. |
| FINETUNE_PEERING_LIFETIME | 60 | Seconds a heartbeat counts: how long a dead active replica holds the others. |
| FINETUNE_WEBHOOK_PORT | 0 | Port of the validating admission webhook (0: no webhook). |
| FINETUNE_WEBHOOK_ADDRESS | 0.0.0.0 | Address the webhook server listens on. |
| FINETUNE_WEBHOOK_HOST | | Host name in the webhook URL the API server calls. |
| FINETUNE_WEBHOOK_CERT, FINETUNE_WEBHOOK_KEY | | TLS certificate and key files of the webhook server. |
| AWS_*, FINETUNE_S3_* | | The operator's own S3 access (it reads progress.json), as finetune_trainer.storage. |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from finetune_operator.api import DEFAULT_IMAGE

FINALIZER = "finetune.dev/finalizer"
ANNOTATION_PREFIX = "finetune.dev"
RDZV_PORT = 29400


class SettingsError(ValueError):
    """An environment variable with a value the operator cannot use."""


def _number(env: dict[str, str], name: str, default: float, *, minimum: float = 0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r}: expected a number of at least {minimum:g}")
    return value


def _int(env: dict[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    value = _number(env, name, default, minimum=minimum)
    if value != int(value) or (maximum is not None and value > maximum):
        bound = f" between {minimum} and {maximum}" if maximum is not None else ""
        raise SettingsError(f"{name}={env[name]!r}: expected an integer{bound}")
    return int(value)


@dataclass(frozen=True)
class Settings:
    """Everything configurable about the operator; see the module docstring for the variables."""

    namespaces: tuple[str, ...] = ()
    trainer_image: str = DEFAULT_IMAGE
    trainer_python: str = "python"
    trainer_metrics_port: int = 9400
    default_storage: str | None = None
    metrics_port: int = 9090
    metrics_address: str = "0.0.0.0"
    poll_seconds: float = 10.0
    backoff_seconds: float = 10.0
    backoff_max_seconds: float = 300.0
    publish_timeout_seconds: float = 600.0
    torchrun_max_restarts: int = 0
    termination_grace_seconds: int = 120
    node_loss_grace_seconds: float = 90.0
    watch_timeout_seconds: int = 300
    peering: str | None = None
    peering_priority: int | None = None
    peering_lifetime: int = 60
    webhook_port: int = 0
    webhook_address: str = "0.0.0.0"
    webhook_host: str | None = None
    webhook_cert: str | None = None
    webhook_key: str | None = None
    s3_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default: the process environment).

        Raises:
            SettingsError: a variable holds a value that cannot be used; the message names it.
        """
        env = dict(os.environ if env is None else env)
        raw_ns = env.get("FINETUNE_NAMESPACES") or env.get("FINETUNE_NAMESPACE") or ""
        values: dict[str, Any] = {
            "namespaces": tuple(n.strip() for n in raw_ns.split(",") if n.strip()),
            "trainer_image": env.get("FINETUNE_TRAINER_IMAGE") or DEFAULT_IMAGE,
            "trainer_python": env.get("FINETUNE_TRAINER_PYTHON") or "python",
            "trainer_metrics_port": _int(env, "FINETUNE_TRAINER_METRICS_PORT", 9400, maximum=65535),
            "default_storage": env.get("FINETUNE_DEFAULT_STORAGE") or None,
            "metrics_port": _int(env, "FINETUNE_METRICS_PORT", 9090, maximum=65535),
            "metrics_address": env.get("FINETUNE_METRICS_ADDRESS") or "0.0.0.0",
            "poll_seconds": _number(env, "FINETUNE_POLL_SECONDS", 10.0, minimum=0.1),
            "backoff_seconds": _number(env, "FINETUNE_BACKOFF_SECONDS", 10.0),
            "backoff_max_seconds": _number(env, "FINETUNE_BACKOFF_MAX_SECONDS", 300.0),
            "publish_timeout_seconds": _number(env, "FINETUNE_PUBLISH_TIMEOUT_SECONDS", 600.0, minimum=1),
            "torchrun_max_restarts": _int(env, "FINETUNE_TORCHRUN_MAX_RESTARTS", 0),
            "termination_grace_seconds": _int(env, "FINETUNE_TERMINATION_GRACE_SECONDS", 120),
            "node_loss_grace_seconds": _number(env, "FINETUNE_NODE_LOSS_GRACE_SECONDS", 90.0),
            "watch_timeout_seconds": _int(env, "FINETUNE_WATCH_TIMEOUT_SECONDS", 300, minimum=1),
            "peering": env.get("FINETUNE_PEERING") or None,
            "peering_priority": _int(env, "FINETUNE_PEERING_PRIORITY", 0, minimum=1, maximum=2**31 - 1)
            if env.get("FINETUNE_PEERING_PRIORITY")
            else None,
            "peering_lifetime": _int(env, "FINETUNE_PEERING_LIFETIME", 60, minimum=5),
            "webhook_port": _int(env, "FINETUNE_WEBHOOK_PORT", 0, maximum=65535),
            "webhook_address": env.get("FINETUNE_WEBHOOK_ADDRESS") or "0.0.0.0",
            "webhook_host": env.get("FINETUNE_WEBHOOK_HOST") or None,
            "webhook_cert": env.get("FINETUNE_WEBHOOK_CERT") or None,
            "webhook_key": env.get("FINETUNE_WEBHOOK_KEY") or None,
            "s3_env": {k: v for k, v in env.items() if k.startswith(("AWS_", "FINETUNE_S3_"))},
        }
        if bool(values["webhook_cert"]) != bool(values["webhook_key"]):
            raise SettingsError("FINETUNE_WEBHOOK_CERT and FINETUNE_WEBHOOK_KEY must be set together")
        return cls(**values)

    def backoff(self, restarts: int) -> float:
        """Delay before restart number ``restarts + 1`` of a worker group: exponential, capped."""
        return min(self.backoff_seconds * (2 ** max(restarts, 0)), self.backoff_max_seconds)


_current: Settings | None = None


def current() -> Settings:
    """The settings of this process, read once."""
    global _current
    if _current is None:
        _current = Settings.from_env()
    return _current


def override(settings: Settings | None) -> None:
    """Replace the process settings (tests, benchmarks); None reads the environment again on next use."""
    global _current
    _current = settings
