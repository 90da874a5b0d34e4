"""What the phase machine (lifecycle.py) is given about a job and what it returns: the decision the controller
carries out (children to create and delete, events, the new status, when to look again)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    """What to do: children to create and delete, events, the new status, when to look again."""

    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)  # (plural, name), e.g. ("jobs", "x-a1")
    # Pods whose graceful deletion no kubelet finished (their node is gone): removed with grace 0.
    force_delete: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue: float | None = None
    restarted: bool = False
    disrupted: bool = False  # of which a disruption (not spent against backoffLimit)
    steps_redone: int = 0  # steps a restart's new attempt trains again, known once it says where it resumed
    published_seconds: float | None = None
    publish_failed: bool = False


@dataclass(frozen=True)
class JobMeta:
    name: str
    namespace: str
    uid: str
    generation: int = 1
    labels: dict[str, str] = field(default_factory=dict)  # the FineTuneJob's own (Kueue's queue-name among them)
