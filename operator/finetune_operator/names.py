"""The names and labels of a FineTuneJob's children: deterministic, so a create that was already done is a
harmless 409 and a restarted operator finds every child it made (see resources.py for the children).
"""

from __future__ import annotations

from typing import Any

from finetune_operator import api
from finetune_operator.ensemble_steps import members
from finetune_operator.settings import RDZV_PORT

NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
JOB_LABEL = "finetune.dev/job"
ATTEMPT_LABEL = "finetune.dev/attempt"
RANK_LABEL = "finetune.dev/rank"
EXPORT_LABEL = "finetune.dev/export"
MEMBER_LABEL = "finetune.dev/member"
# Set by the Job controller on every pod of an Indexed Job: the pod's index, which is the worker's node rank.
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
# Kueue's labels: a FineTuneJob carrying them passes them to its Jobs, which Kueue then queues and admits.
KUEUE_PREFIX = "kueue.x-k8s.io/"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
APP = "finetune-operator"
TRAINER = "trainer"
EXPORTER = "exporter"

MAX_DNS_LABEL = 63


# --- names --------------------------------------------------------------------------------------------------


def service_name(job: str) -> str:
    return f"{job}-workers"


def _group(attempt: int, member: int | None) -> str:
    return f"a{attempt}" if member is None else f"a{attempt}-m{member}"


def config_name(job: str, attempt: int, member: int | None = None) -> str:
    return f"{job}-{_group(attempt, member)}-config"


def worker_job_name(job: str, attempt: int, member: int | None = None) -> str:
    """The Indexed Job of one worker group: its pods' hostnames are ``<this>-<rank>`` (the Job controller sets
    them from the index, under the workers' Service)."""
    return f"{job}-{_group(attempt, member)}"


def hostname(job: str, attempt: int, rank: int, member: int | None = None) -> str:
    return f"{worker_job_name(job, attempt, member)}-{rank}"


def worker_slots(job: api.FineTuneJob) -> list[tuple[int | None, int]]:
    """(member, rank) of every worker pod of an attempt: member None without an ensemble."""
    nodes = job.spec.resources.nodes
    groups: list[int | None] = [m.index for m in members(job)] or [None]
    return [(m, r) for m in groups for r in range(nodes)]


def export_name(job: str, n: int) -> str:
    return f"{job}-export-{n}"


def rendezvous_endpoint(job: str, attempt: int, nodes: int, member: int | None = None) -> str:
    """c10d rendezvous host: the DNS name of the group's index-0 pod; a one-pod group rendezvouses inside its pod."""
    if nodes == 1:
        return "localhost:0"
    return f"{hostname(job, attempt, 0, member)}.{service_name(job)}:{RDZV_PORT}"


# The longest worker hostname a job's name must leave room for: attempt numbers up to 9999, ten members.
_ROOM_ATTEMPT, _ROOM_MEMBER = 9999, 9


def name_errors(job: str, nodes: int, ensemble: bool = False) -> list[str]:
    """Reasons the children's DNS names would be invalid for this job name and node count."""
    if job[:1] and not job[:1].isalpha():
        return [f"metadata.name: must start with a lowercase letter: the workers' Service {service_name(job)!r} "
                f"must be a DNS-1035 label (for example 'ft-{job}')"]  # fmt: skip
    longest = hostname(job, _ROOM_ATTEMPT, max(nodes - 1, 0), _ROOM_MEMBER if ensemble else None)
    if len(longest) > MAX_DNS_LABEL:
        room = MAX_DNS_LABEL - len(longest) + len(job)
        return [f"metadata.name: at most {room} characters for {nodes} worker pods (pod hostname {longest!r} is too "
                "long)"]
    return []


def labels(job: str, component: str, **extra: str | int) -> dict[str, str]:
    out = {NAME_LABEL: APP, COMPONENT_LABEL: component, JOB_LABEL: job}
    keys = {"attempt": ATTEMPT_LABEL, "rank": RANK_LABEL, "export": EXPORT_LABEL, "member": MEMBER_LABEL}
    out.update({keys[k]: str(v) for k, v in extra.items()})
    return out


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
