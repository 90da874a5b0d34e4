"""What the cluster says reaches the job. Children the API server will not create: the refusal becomes the job's
reason, message, conditions and one Warning event; a permanent one fails the job, a temporary one is retried.
Pods that wait (unschedulable, image pull, a missing Secret): the job says why."""

from __future__ import annotations

from datetime import timedelta

import pytest

from finetune_operator import lifecycle as L
from finetune_operator.decision import Decision
from finetune_operator.observed import JobView, Observed, Refusal, job_view, owned, pod_view
from tests.unit.test_lifecycle import (
    META,
    SETTINGS,
    T0,
    condition,
    created,
    jobs_of,
    owned_by_jobs,
    spec,
    step,
    worker,
)

QUOTA = Refusal(403, "Job", "sentiment-a1", 'jobs.batch "sentiment-a1" is forbidden: exceeded quota: jobs, '
                "requested: count/jobs.batch=1, used: count/jobs.batch=10, limited: count/jobs.batch=10")  # fmt: skip
INVALID = Refusal(422, "Job", "sentiment-a1", 'Job.batch "sentiment-a1" is invalid: '
                  "spec.template.spec.containers[0].image: Required")  # fmt: skip
POD_QUOTA = ('Error creating: pods "sentiment-a1-0-x7k2p" is forbidden: exceeded quota: gpu, requested: '
             "requests.nvidia.com/gpu=4, used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=2")


def refused_step(status: dict, refusal: Refusal, pods=(), at: float = 1, s: dict | None = None) -> Decision:
    pods = owned_by_jobs(list(pods))
    observed = Observed(pods=pods, jobs=jobs_of(pods), refused=refusal)
    return L.reconcile(META, s or spec(), status, observed, T0 + timedelta(seconds=at), SETTINGS)


@pytest.mark.parametrize(
    ("refusal", "reason", "permanent"),
    [
        (QUOTA, "QuotaExceeded", False),
        (Refusal(403, "Job", "p", 'jobs.batch "p" is forbidden: violates PodSecurity "restricted:latest"'),
         "PodSecurityViolation", False),
        (Refusal(403, "Pod", "p", "maximum cpu usage per Container is 1, but limit is 2"), "Forbidden", False),
        (Refusal(429, "Pod", "p", "Too many requests"), "ApiUnavailable", False),
        (Refusal(503, "Pod", "p", "etcdserver: leader changed"), "ApiUnavailable", False),
        (INVALID, "InvalidChild", True),
        (Refusal(400, "Service", "s", "bad request"), "InvalidChild", True),
    ],
)
def test_refusals_are_named_and_classed(refusal: Refusal, reason: str, permanent: bool) -> None:
    assert (refusal.reason, refusal.permanent) == (reason, permanent)


def test_a_quota_refusal_shows_in_status_once_and_the_create_is_retried() -> None:
    first = step(None)
    d = refused_step(first.status, QUOTA)
    assert d.status["phase"] == "Pending" and d.status["reason"] == "QuotaExceeded"
    assert "cannot create Job sentiment-a1: HTTP 403" in d.status["message"]
    assert "exceeded quota: jobs" in d.status["message"]
    assert condition(d.status, "Training")["reason"] == "QuotaExceeded"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "QuotaExceeded")]
    assert "Job/sentiment-a1" in created(d)  # tried again (the caller waits between tries)
    again = refused_step(d.status, QUOTA, at=40)
    assert again.events == [] and again.status["reason"] == "QuotaExceeded"
    assert again.status.get("restarts") == 0  # waiting for quota spends no restart


def test_once_the_group_is_created_the_refusal_clears() -> None:
    waiting = refused_step(step(None).status, QUOTA).status
    d = step(waiting, [worker(0, phase="Pending"), worker(1, phase="Pending")], at=60)
    assert (d.status["phase"], d.status["reason"]) == ("Pending", "Created")
    assert [e.reason for e in d.events] == ["Created"]
    assert step(d.status, [worker(0), worker(1)], at=61).status["phase"] == "Running"


def test_an_invalid_child_fails_the_job_naming_the_api_servers_answer() -> None:
    d = refused_step(step(None).status, INVALID, pods=[worker(1)])
    assert d.status["phase"] == "Failed" and d.status["reason"] == "InvalidChild"
    assert "spec.template.spec.containers[0].image: Required" in d.status["message"]
    assert ("jobs", "sentiment-a1") in d.delete
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "InvalidChild")]


def test_a_refused_export_pod_is_shown_and_created_again() -> None:
    serving = spec(serving={"enabled": True, "tritonUrl": "triton:8000", "repository": "s3://models"})
    done = [worker(0, phase="Succeeded"), worker(1, phase="Succeeded")]
    status = step(step(None, s=serving).status, [worker(0), worker(1)], at=1, s=serving).status
    exporting = step(status, done, at=2, s=serving).status
    assert exporting["phase"] == "Exporting"
    limit = Refusal(403, "Job", "sentiment-export-1", 'jobs.batch "sentiment-export-1" is forbidden: maximum '
                    "memory usage per Container is 4Gi, but limit is 8Gi")  # fmt: skip
    d = refused_step(exporting, limit, pods=done, at=3, s=serving)
    assert (d.status["phase"], d.status["reason"]) == ("Exporting", "Forbidden")
    assert "maximum memory usage per Container is 4Gi" in d.status["message"]
    assert created(d) == ["Job/sentiment-export-1"]


def test_pods_the_api_server_refuses_the_job_controller_show_in_status() -> None:
    """A ResourceQuota or LimitRange refuses the Job controller's pods: its FailedCreate warning is the reason."""
    first = step(None)
    observed = Observed(jobs=jobs_of([worker(0)]), create_failures={"sentiment-a1": POD_QUOTA})
    d = L.reconcile(META, spec(), first.status, observed, T0 + timedelta(seconds=5), SETTINGS)
    assert (d.status["phase"], d.status["reason"]) == ("Pending", "QuotaExceeded")
    assert d.status["message"] == f"job sentiment-a1 cannot create its pods: {POD_QUOTA}"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "QuotaExceeded")]
    assert d.status["restarts"] == 0 and not d.create


def pod(status: dict) -> dict:
    return {"metadata": {"name": "sentiment-a1-0"}, "status": status}


SCHEDULED = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}  # fmt: skip
UNSCHEDULABLE = {"phase": "Pending", "conditions": [SCHEDULED]}


@pytest.mark.parametrize(
    ("status", "reason", "message"),
    [
        (UNSCHEDULABLE, "Unschedulable", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."),
        ({"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": {"waiting": {
            "reason": "ImagePullBackOff", "message": 'Back-off pulling image "trainer:0.1"'}}}]},
         "ImagePullBackOff", 'Back-off pulling image "trainer:0.1"'),
        ({"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": {"waiting": {
            "reason": "CreateContainerConfigError", "message": 'secret "s3" not found'}}}]},
         "CreateContainerConfigError", 'secret "s3" not found'),
        ({"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": {"waiting": {
            "reason": "ContainerCreating"}}}]}, "", ""),
        ({"phase": "Running", "containerStatuses": [{"name": "trainer", "state": {"running": {}}}]}, "", ""),
    ],
)  # fmt: skip
def test_why_a_pod_waits_is_read_from_its_status(status: dict, reason: str, message: str) -> None:
    view = pod_view(pod(status))
    assert (view.waiting, view.waiting_message) == (reason, message)


def test_a_job_whose_pods_cannot_be_scheduled_says_so_and_recovers() -> None:
    created_status = step(None).status
    stuck = worker(0, phase="Pending", waiting="Unschedulable", waiting_message="0/3 nodes are available")
    d = step(created_status, [stuck, worker(1, phase="Pending")], at=1)
    assert (d.status["phase"], d.status["reason"]) == ("Pending", "Unschedulable")
    assert d.status["message"] == "pod sentiment-a1-0: 0/3 nodes are available"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "Unschedulable")]
    assert step(d.status, [stuck, worker(1, phase="Pending")], at=2).events == []
    running = step(d.status, [worker(0), worker(1)], at=3)
    assert (running.status["phase"], running.status["reason"]) == ("Running", "Running")


def test_a_restarted_group_that_cannot_be_scheduled_says_so() -> None:
    status = step(step(None).status, [worker(0), worker(1)], at=1).status
    failed = step(status, [worker(0, phase="Failed", exit_code=1), worker(1)], at=2).status
    assert failed["phase"] == "Restarting"
    after_backoff = step(failed, [], at=60).status
    stuck = [worker(r, attempt=2, phase="Pending", waiting="ImagePullBackOff") for r in (0, 1)]
    d = step(after_backoff, stuck, at=61)
    assert (d.status["phase"], d.status["reason"]) == ("Restarting", "ImagePullBackOff")


def test_only_jobs_owned_by_this_incarnation_of_the_job_are_seen() -> None:
    def owned_job(uid: str) -> dict:
        ref = {"kind": "FineTuneJob", "name": "sentiment", "uid": uid, "controller": True}
        return {"metadata": {"name": "sentiment-a1", "uid": f"job-{uid}", "ownerReferences": [ref]}, "status": {}}

    old, new = job_view(owned_job("uid-old")), job_view(owned_job("uid-new"))
    assert (old.owner_uid, new.owner_uid) == ("uid-old", "uid-new")
    assert owned([old, new], "uid-new") == [new]


def test_job_and_pod_views_read_what_the_job_controller_and_kueue_write() -> None:
    job = job_view({
        "metadata": {"name": "sentiment-a2", "uid": "j2", "labels": {
            "app.kubernetes.io/component": "trainer", "finetune.dev/attempt": "2",
            "kueue.x-k8s.io/queue-name": "team-a"}},
        "spec": {"suspend": True},
        "status": {"conditions": [{"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy",
                                   "message": "Container trainer for pod ml/p failed with exit code 2"}]},
    })  # fmt: skip
    assert job == JobView("sentiment-a2", "trainer", uid="j2", attempt=2, suspended=True, failed=True,
                          failed_reason="PodFailurePolicy", failed_message="Container trainer for pod ml/p failed "
                          "with exit code 2", queued=True)  # fmt: skip
    pod = pod_view({
        "metadata": {"name": "sentiment-a2-1-abcde", "labels": {"batch.kubernetes.io/job-completion-index": "1"}},
        "status": {"phase": "Running", "conditions": [{"type": "DisruptionTarget", "status": "True",
                   "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}]},
    })  # fmt: skip
    assert (pod.rank, pod.disrupted, pod.disrupted_message) == (1, "EvictionByEvictionAPI", "Eviction API: evicting")


def _pod_on(ready: dict, containers: list[dict], phase: str = "Running") -> dict:
    return {"metadata": {"name": "sentiment-a1-1-abcde"}, "spec": {"nodeName": "node-c"},
            "status": {"phase": phase, "conditions": [{"type": "Ready", **ready}], "containerStatuses": containers}}


@pytest.mark.parametrize(
    ("ready", "containers", "phase", "lost"),
    [
        # The node lifecycle controller's mark (MarkPodsNotReady): Ready False, the kubelet's ready containers.
        ({"status": "False"}, [{"name": "trainer", "ready": True, "state": {"running": {}}}], "Running", True),
        # The kubelet's own word: a container is not ready, and it says so.
        ({"status": "False", "reason": "ContainersNotReady"},
         [{"name": "trainer", "ready": False, "state": {"running": {}}}], "Running", False),
        ({"status": "True"}, [{"name": "trainer", "ready": True, "state": {"running": {}}}], "Running", False),
        ({"status": "False", "reason": "ReadinessGatesNotReady"}, [{"name": "trainer", "ready": True}], "Running",
         False),
        ({"status": "False"}, [{"name": "trainer", "ready": True}], "Failed", False),
    ],
)  # fmt: skip
def test_a_pod_whose_node_stopped_reporting_is_seen(ready: dict, containers: list, phase: str, lost: bool) -> None:
    view = pod_view(_pod_on(ready, containers, phase))
    assert (view.node_lost, view.node) == (lost, "node-c")
