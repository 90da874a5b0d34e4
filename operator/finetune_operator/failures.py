"""Why a worker or export pod failed, whether retrying can help, and what the user should do about it.

A failed pod says why in its exit code, its ``OOMKilled`` reason, the cluster's disruption condition, and its
termination message: the trainer's ``error:`` and ``exitcode:`` lines (contract.py), or, when it wrote none,
the tail of its log (``FallbackToLogsOnError``). From these, one reason of :data:`ADVICE`:

=====================  ===========================================================  =========
reason                 seen as                                                      retried
=====================  ===========================================================  =========
InvalidInput           exit code 2: bad data, spec or model                         no
OOMKilled              the container passed its memory limit                        yes
CUDAOutOfMemory        ``torch.OutOfMemoryError`` / "CUDA out of memory"            yes
CollectiveTimeout      an NCCL or gloo collective timed out or lost its peer        yes
RendezvousTimeout      a node could not join the group in time                      yes
StorageUnavailable     exit code 3: checkpoint storage refused or unreachable       yes
Disrupted, Evicted,    the cluster stopped the pod (a drain, Kueue, a lost node)    at once, not counted
NodeLost
Killed, WorkerFailed   a signal, any other crash                                    yes
=====================  ===========================================================  =========

The phase machine shows the reason, and ``status.advice`` what to do (:func:`advice`, for these and for the
reasons the cluster gives a waiting pod: ErrImagePull, Unschedulable, QuotaExceeded, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from finetune_operator.observed import JobView, PodView
from finetune_trainer import contract

# Where the failure summary of torchrun names the first failed worker's exit code.
_ROOT_CAUSE = re.compile(r"Root Cause.*?exitcode\s*:\s*(-?\d+)", re.S)
# What a crash's last line (the trainer writes it as ``error: <type>: <message>``) or a log tail holds.
_CUDA_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|HIP out of memory")
_COLLECTIVE = re.compile(
    r"Watchdog caught collective operation timeout|DistBackendError|NCCL (?:error|timeout|communicator)"
    r"|ProcessGroupNCCL|ProcessGroupGloo|gloo.*(?:timed out|Timeout|Connection closed|Connection reset)"
    r"|Socket Timeout|Connection reset by peer|DistNetworkError",
    re.I,
)
_RENDEZVOUS = re.compile(r"RendezvousTimeoutError|RendezvousClosedError|rendezvous host .* not reachable", re.I)

_ANYWAY = "the job restarts from its latest checkpoint until backoffLimit restarts are spent"
_IMAGE = ("the image cannot be pulled: check its name and tag (spec.template.image, or the chart's "
          "trainer.image), that the nodes reach its registry, and spec.template.imagePullSecrets")  # fmt: skip
ADVICE = {
    "InvalidSpec": "fix the field the message names and apply the job again (`kubectl apply --dry-run=server` "
    "checks a file against the admission rules first)",
    "InvalidInput": "fix the data, field or model the error names and apply the job again: retrying the same "
    "input cannot help (`finetune logs <job>` shows the whole error)",
    "OOMKilled": "the container passed its memory limit: raise spec.resources.memory, or lower "
    "hyperparameters.batchSize or maxSeqLength; " + _ANYWAY,
    "CUDAOutOfMemory": "the GPU ran out of memory: set hyperparameters.autoBatchSize, or halve batchSize and "
    "double gradientAccumulationSteps (the same effective batch), lower maxSeqLength, set gradientCheckpointing, "
    "or ask for a larger GPU; " + _ANYWAY,
    "CollectiveTimeout": "a collective (NCCL or gloo) timed out or lost a peer: another rank failed or hung first "
    "(find the first error in every worker's log, `finetune logs <job>`), or the network between nodes dropped; "
    "NCCL_DEBUG=INFO in spec.template.env says more; " + _ANYWAY,
    "RendezvousTimeout": "not every node joined in time: check that all worker pods were scheduled and started "
    "(image pulls, quota), or raise spec.resources.rendezvous.joinTimeoutSeconds; " + _ANYWAY,
    "StorageUnavailable": "the checkpoint storage refused or did not answer: check spec.checkpoint.storage, the "
    "S3 endpoint and the credentials Secret; " + _ANYWAY,
    "Killed": "a signal stopped a worker (an OOM kill inside the pod, a node shutting down): see the workers' "
    "logs; " + _ANYWAY,
    "WorkerFailed": "see the workers' logs (`finetune logs <job>`); " + _ANYWAY,
    "Disrupted": "nothing: the cluster stopped the pods (a drain, a preemption); the job restarts from its latest "
    "checkpoint without spending backoffLimit",
    "Evicted": "nothing: the pod was evicted; the job restarts from its latest checkpoint without spending "
    "backoffLimit (frequent evictions: the node runs short of memory or disk)",
    "NodeLost": "nothing: the node stopped answering; the job restarts on another node from its latest "
    "checkpoint without spending backoffLimit",
    "Preempted": "nothing: Kueue gave the quota to a higher-priority workload; the job resumes from its final "
    "checkpoint when admitted again (a higher kueue.x-k8s.io/priority-class or more quota runs it sooner)",
    "ErrImagePull": _IMAGE,
    "ImagePullBackOff": _IMAGE,
    "InvalidImageName": _IMAGE,
    "CreateContainerConfigError": "a Secret or ConfigMap the pods need is missing (spec.checkpoint.s3."
    "credentialsSecret, an env reference): create it in the job's namespace",
    "Unschedulable": "no node fits the pods: lower spec.resources (cpu, memory, gpusPerNode, nodes), check node "
    "selectors and taints in spec.template, or add nodes",
    "QuotaExceeded": "the namespace's ResourceQuota is spent: lower spec.resources, wait for other jobs, or raise "
    "the quota; the pods are created once it fits",
    "PodSecurityViolation": "the namespace's Pod Security level refuses the pods: label the namespace "
    "pod-security.kubernetes.io/enforce=restricted or lower, as the message names",
    "Forbidden": "an admission rule (a LimitRange, a webhook) refused the pods: the message says which; adjust "
    "spec.resources or the rule",
    "DeadlineExceeded": "raise spec.activeDeadlineSeconds, or shorten the run (fewer epochs or maxSteps)",
    "PublishFailed": "see the export pod's log (`finetune logs <job>`), the model repository's storage and "
    "serving.tritonUrl; fix them and the next export try publishes",
}


def advice(reason: str | None) -> str | None:
    """What to do about ``reason``; None when nothing needs doing."""
    return ADVICE.get(reason or "")


@dataclass(frozen=True)
class Failure:
    permanent: bool
    reason: str
    message: str
    disruption: bool = False  # the cluster stopped it (eviction, drain, lost node): not the job's failure


def create_failure_reason(message: str) -> str:
    """The job's reason for a FailedCreate event of its Job (what the API server told the Job controller)."""
    text = message.lower()
    if "exceeded quota" in text:
        return "QuotaExceeded"
    if "podsecurity" in text:
        return "PodSecurityViolation"
    if "forbidden" in text:  # a LimitRange, an admission webhook
        return "Forbidden"
    return "FailedCreate"


def crash_reason(text: str) -> str | None:
    """The reason a crash's words give (CUDA out of memory before a collective: the lost peer follows it)."""
    if _CUDA_OOM.search(text):
        return "CUDAOutOfMemory"
    if _RENDEZVOUS.search(text):
        return "RendezvousTimeout"
    if _COLLECTIVE.search(text):
        return "CollectiveTimeout"
    return None


def classify(pod: PodView) -> Failure | None:
    """Why a pod failed, and whether retrying can help; None when it has not failed."""
    if pod.disrupted:
        said = f": {pod.disrupted_message}" if pod.disrupted_message else ""
        return Failure(False, "Disrupted", f"pod {pod.name} was disrupted ({pod.disrupted}){said}", disruption=True)
    if pod.node_lost:
        node = f" {pod.node}" if pod.node else ""
        return Failure(False, "NodeLost", f"pod {pod.name}: its node{node} stopped reporting (NodeNotReady)",
                       disruption=True)  # fmt: skip
    if pod.deleting:
        return Failure(False, "PodDeleted", f"pod {pod.name} was deleted")
    if pod.reason in ("Evicted", "Preempting") or pod.phase == "Unknown" or pod.reason == "NodeLost":
        why = "NodeLost" if pod.phase == "Unknown" or pod.reason == "NodeLost" else "Evicted"
        return Failure(False, why, f"pod {pod.name}: {pod.message or why}", disruption=True)
    if pod.phase != "Failed":
        return None
    code = pod.exit_code
    said = contract.parse_termination(pod.message)  # the trainer's own lines; a log tail holds them too
    root = _ROOT_CAUSE.search(pod.message or "")
    worker_code = said.exit_code if said.exit_code is not None else int(root.group(1)) if root else code
    if code in contract.PERMANENT_EXITS or worker_code in contract.PERMANENT_EXITS:
        text = said.error or f"exit code {worker_code} (bad input); see `finetune logs`"
        return Failure(True, "InvalidInput", f"pod {pod.name}: {text}")
    if pod.reason == "OOMKilled":
        return Failure(False, "OOMKilled", f"pod {pod.name} ran out of memory (OOMKilled)")
    tail = f": {said.error}" if said.error else ""
    # The trainer's own exit code says storage; a storage error's text may read like a timeout of another kind.
    if worker_code == contract.EXIT_STORAGE:
        return Failure(False, "StorageUnavailable", f"pod {pod.name} failed with exit code {code}{tail}")
    crash = crash_reason(said.error or pod.message or "")
    if crash is not None:
        return Failure(False, crash, f"pod {pod.name} failed with exit code {code}{tail}")
    if code in contract.SIGNAL_EXITS or worker_code in contract.SIGNAL_EXITS:
        return Failure(False, "Killed", f"pod {pod.name} was stopped by a signal (exit code {code})")
    return Failure(False, "WorkerFailed", f"pod {pod.name} failed with exit code {code}{tail}")


_EXIT_CODE = re.compile(r"exit code (-?\d+)")


def job_failure(job: JobView, default: str = "WorkerFailed") -> Failure:
    """Why a Job failed, from its Failed condition, when its failed pods are no longer there to say."""
    said = job.failed_message or job.failed_reason or "failed"
    if "DisruptionTarget" in said:
        return Failure(False, "Disrupted", f"job {job.name}: {said}", disruption=True)
    code = _EXIT_CODE.search(said)
    if code and int(code.group(1)) in contract.PERMANENT_EXITS:
        return Failure(True, "InvalidInput", f"job {job.name}: {said} (bad input); see `finetune logs`")
    return Failure(False, default, f"job {job.name}: {said}")


# Which of several pods' failures names the cause: a rank that ran out of memory takes the others down with it
# (they then fail on a collective with a lost peer), so the most specific reason comes first.
_RANK = ("InvalidInput", "CUDAOutOfMemory", "OOMKilled", "StorageUnavailable", "RendezvousTimeout",
         "CollectiveTimeout", "WorkerFailed", "Killed")  # fmt: skip


def primary(failures: list[Failure]) -> Failure:
    """The failure to report among ``failures`` (not empty): the most specific reason, then the first seen."""
    return min(failures, key=lambda f: _RANK.index(f.reason) if f.reason in _RANK else len(_RANK))
