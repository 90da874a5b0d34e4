"""What the phase machine sees of a job's world, summarised by the caller: its Jobs (JobView) and their pods
(PodView), from the objects kopf indexes, Kueue's word on a queued Job (its Workload), the published model as
Triton reports it (Served), its progress record; which version the export pod published. Why a pod failed is
failures.py's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune_operator import names
from finetune_operator.status import EXPORTING, PUBLISHING
from finetune_trainer import contract


@dataclass(frozen=True)
class PodView:
    """The facts of one child pod that the phase machine uses."""

    name: str
    component: str
    attempt: int = 0
    rank: int = 0
    member: int | None = None  # an ensemble member's worker group; None without an ensemble
    export: int = 0
    phase: str = "Pending"
    deleting: bool = False
    deletion_time: str = ""  # metadata.deletionTimestamp: when the grace period ends
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    running: tuple[str, ...] = ()
    failed_container: str = ""
    owner_uid: str = ""  # the uid of the FineTuneJob that owns it
    waiting: str = ""  # why the pod cannot start yet (Unschedulable, ImagePullBackOff, ...), as the cluster says
    waiting_message: str = ""
    # The reason of its DisruptionTarget condition (EvictionByEvictionAPI, PreemptionByScheduler,
    # DeletionByTaintManager, DeletionByPodGC, TerminationByKubelet): it is being stopped, not failing.
    disrupted: str = ""
    disrupted_message: str = ""
    node: str = ""  # spec.nodeName
    # Its node stopped reporting: the node lifecycle controller set the pod's Ready condition to False while
    # the last word of the kubelet (every container ready) still stands. Such a pod never finishes by itself.
    node_lost: bool = False
    finished_at: str = ""  # when the container that decided the pod's exit terminated

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def pod_view(pod: dict[str, Any]) -> PodView:
    """Summarise a Pod object (as the API returns it) into a PodView."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    lbl = meta.get("labels") or {}
    exit_code, reason, message = None, status.get("reason") or "", status.get("message") or ""
    running, failed, finished_at = [], "", ""
    waiting, waiting_message = _waiting(status)
    disruption = next((c for c in status.get("conditions") or []
                       if c.get("type") == "DisruptionTarget" and c.get("status") == "True"), {})  # fmt: skip
    index = lbl.get(names.INDEX_LABEL) or (meta.get("annotations") or {}).get(names.INDEX_LABEL)
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        state = cs.get("state") or {}
        if "running" in state:
            running.append(cs.get("name", ""))
        term = state.get("terminated")
        if not term or (exit_code not in (None, 0) and term.get("exitCode", 0) == 0):
            continue
        exit_code = term.get("exitCode")
        reason = term.get("reason") or reason
        message = term.get("message") or message
        finished_at = term.get("finishedAt") or finished_at
        if exit_code != 0:
            failed = cs.get("name", "")
    return PodView(
        name=meta.get("name", ""),
        component=lbl.get(names.COMPONENT_LABEL, ""),
        attempt=_int(lbl.get(names.ATTEMPT_LABEL)),
        rank=_int(index if index is not None else lbl.get(names.RANK_LABEL)),
        member=_int(lbl[names.MEMBER_LABEL]) if names.MEMBER_LABEL in lbl else None,
        export=_int(lbl.get(names.EXPORT_LABEL)),
        phase=status.get("phase") or "Pending",
        deleting=bool(meta.get("deletionTimestamp")),
        deletion_time=meta.get("deletionTimestamp") or "",
        exit_code=exit_code,
        reason=reason,
        message=message,
        running=tuple(running),
        failed_container=failed,
        owner_uid=next((o.get("uid", "") for o in meta.get("ownerReferences") or [] if o.get("controller")), ""),
        waiting=waiting,
        waiting_message=waiting_message,
        disrupted=disruption.get("reason") or ("Disrupted" if disruption else ""),
        disrupted_message=disruption.get("message") or "",
        node=(pod.get("spec") or {}).get("nodeName") or "",
        node_lost=_marked_not_ready(status),
        finished_at=finished_at,
    )


def _marked_not_ready(status: dict[str, Any]) -> bool:
    """Ready False although every container is ready: only the node lifecycle controller writes that (it marks
    the pods of a node that stopped reporting; a kubelet derives Ready from its containers, with a reason)."""
    if status.get("phase") in ("Succeeded", "Failed"):
        return False
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    containers = status.get("containerStatuses") or []
    return (ready is not None and ready.get("status") == "False" and ready.get("reason") != "ReadinessGatesNotReady"
            and bool(containers) and all(c.get("ready") for c in containers))  # fmt: skip


@dataclass(frozen=True)
class JobView:
    """The facts of one child batch/v1 Job (a worker group or an export try) that the phase machine uses."""

    name: str
    component: str
    uid: str = ""
    attempt: int = 0
    member: int | None = None
    export: int = 0
    suspended: bool = False
    deleting: bool = False
    complete: bool = False
    failed: bool = False  # a Failed or FailureTarget condition: the Job controller has judged the group failed
    failed_reason: str = ""  # BackoffLimitExceeded, PodFailurePolicy, DeadlineExceeded, ...
    failed_message: str = ""
    queued: bool = False  # it carries Kueue's queue-name label
    owner_uid: str = ""


def job_view(obj: dict[str, Any]) -> JobView:
    """Summarise a Job object (as the API returns it) into a JobView."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    lbl = meta.get("labels") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    failed = conds.get("Failed") or conds.get("FailureTarget") or {}
    return JobView(
        name=meta.get("name", ""),
        component=lbl.get(names.COMPONENT_LABEL, ""),
        uid=meta.get("uid", ""),
        attempt=_int(lbl.get(names.ATTEMPT_LABEL)),
        member=_int(lbl[names.MEMBER_LABEL]) if names.MEMBER_LABEL in lbl else None,
        export=_int(lbl.get(names.EXPORT_LABEL)),
        suspended=bool(spec.get("suspend")),
        deleting=bool(meta.get("deletionTimestamp")),
        complete="Complete" in conds,
        failed=bool(failed),
        failed_reason=failed.get("reason") or "",
        failed_message=failed.get("message") or "",
        queued=names.QUEUE_LABEL in lbl,
        owner_uid=next((o.get("uid", "") for o in meta.get("ownerReferences") or [] if o.get("controller")), ""),
    )


@dataclass(frozen=True)
class Admission:
    """Kueue's word on a queued Job, from its Workload's conditions."""

    admitted: bool = False
    reason: str = ""  # Pending, Preempted, Evicted, ... (the condition's reason)
    message: str = ""  # e.g. "couldn't assign flavors to pod set main: insufficient quota for cpu ..."
    evicted: bool = False


def admission(workload: dict[str, Any]) -> Admission:
    """Summarise a Kueue Workload: admitted, or why not (QuotaReserved=False), or why it was evicted."""
    conds = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
    evicted = conds.get("Evicted") or {}
    if evicted.get("status") == "True":
        return Admission(False, evicted.get("reason") or "Evicted", evicted.get("message") or "", evicted=True)
    admitted = conds.get("Admitted") or {}
    if admitted.get("status") == "True":
        return Admission(True, admitted.get("reason") or "Admitted", admitted.get("message") or "")
    quota = conds.get("QuotaReserved") or {}
    return Admission(False, quota.get("reason") or "Pending", quota.get("message") or "waiting for Kueue")


def owned(jobs: list[JobView], uid: str) -> list[JobView]:
    """The Jobs of this incarnation of the FineTuneJob: one deleted and created again under the same name must
    not adopt the old one's children, still being deleted (they carry the same labels and names)."""
    return [j for j in jobs if j.owner_uid == uid]


def owned_pods(pods: list[PodView], jobs: list[JobView]) -> list[PodView]:
    """The pods of these Jobs (a pod's controller is its Job)."""
    uids = {j.uid for j in jobs}
    return [p for p in pods if p.owner_uid in uids]


# Waiting reasons of a container that starts normally: not worth a word in the job's status.
_STARTING = ("", "ContainerCreating", "PodInitializing")


def _waiting(status: dict[str, Any]) -> tuple[str, str]:
    """Why a pending pod is not running: the scheduler's PodScheduled=False, else a container's waiting state
    (ErrImagePull, ImagePullBackOff, CreateContainerConfigError for a missing Secret, ...)."""
    if status.get("phase", "Pending") != "Pending":
        return "", ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason"):
            return cond["reason"], cond.get("message") or ""
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason", "") not in _STARTING:
            return waiting["reason"], waiting.get("message") or ""
    return "", ""


def _int(raw: str | None) -> int:
    try:
        return int(raw or 0)
    except ValueError:
        return 0


@dataclass(frozen=True)
class Served:
    """What Triton says about the published model (confirm.py)."""

    ready: bool
    name: str
    version: int | None = None
    endpoint: str | None = None
    message: str = ""


@dataclass(frozen=True)
class Refusal:
    """The API server refused to create one of the job's children (the last try of the caller)."""

    status: int  # HTTP status; 0 when the server could not be reached
    kind: str
    name: str
    message: str

    @property
    def permanent(self) -> bool:
        """400 and 422 say the object itself is wrong: trying again cannot help. 403 (quota, LimitRange, Pod
        Security, RBAC), 429 and 5xx can change without the job changing, so the caller backs off and retries,
        as the Job controller does."""
        return self.status in (400, 422)

    @property
    def reason(self) -> str:
        text = self.message.lower()
        if self.status == 403 and "exceeded quota" in text:
            return "QuotaExceeded"
        if self.status == 403 and "podsecurity" in text:
            return "PodSecurityViolation"
        if self.status == 403:
            return "Forbidden"
        if self.permanent:
            return "InvalidChild"
        return "ApiUnavailable"

    def describe(self) -> str:
        said = f"HTTP {self.status}: {self.message}" if self.status else self.message
        return f"cannot create {self.kind} {self.name}: {said}"


@dataclass
class Observed:
    """Everything the caller saw this time: the job's pods, its progress file, the served model, and the API
    server's refusal of the last child the caller tried to create."""

    pods: list[PodView] = field(default_factory=list)
    jobs: list[JobView] = field(default_factory=list)
    admissions: dict[str, Admission] = field(default_factory=dict)  # by Job name: Kueue's word on queued Jobs
    # By Job name: the Job controller's last FailedCreate warning (a quota, a LimitRange or Pod Security refused
    # its pods), for Jobs with fewer pods than they should have.
    create_failures: dict[str, str] = field(default_factory=dict)
    progress: dict[str, Any] | None = None
    served: Served | None = None
    refused: Refusal | None = None
    members: list[dict[str, Any] | None] | None = None  # an ensemble's member progress records, by index
    ensemble_metrics: dict[str, Any] | None = None  # its combine step's held-out metrics (ensemble/metrics.json)


def wants_confirmation(status: dict | None, pods: list[PodView]) -> bool:
    """Whether the caller should ask Triton about the published model before reconciling."""
    return _published_pod(status, pods) is not None


def published_version(status: dict | None, pods: list[PodView]) -> int | None:
    """The version the current export pod's publish step wrote (its termination message), or None when it did
    not say (an older trainer image): then the newest served version is taken."""
    pod = _published_pod(status, pods)
    record = contract.parse_termination(pod.message).published if pod else None
    return record["version"] if record else None


def _published_pod(status: dict | None, pods: list[PodView]) -> PodView | None:
    status = status or {}
    if status.get("phase") not in (EXPORTING, PUBLISHING):
        return None
    n = int(status.get("exportAttempt") or 1)
    return next((p for p in pods if p.component == names.EXPORTER and p.export == n and p.phase == "Succeeded"),
                None)  # fmt: skip
