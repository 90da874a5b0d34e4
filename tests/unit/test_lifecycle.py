"""The phase machine, driven step by step with observed Jobs and pods as a cluster would report them.

Unless a test gives the Jobs itself, ``step`` derives each worker group's and export try's Job from its pods as
the Job controller judges them with ``backoffLimit: 0``: failed once any pod failed, complete once every pod
succeeded."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from finetune_operator import lifecycle as L
from finetune_operator.decision import Decision, JobMeta
from finetune_operator.failures import classify
from finetune_operator.observed import (
    Admission,
    JobView,
    Observed,
    PodView,
    Served,
    pod_view,
    published_version,
    wants_confirmation,
)
from finetune_operator.settings import Settings

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
META = JobMeta("sentiment", "ml", "uid-1", generation=1)
SETTINGS = Settings(backoff_seconds=10, backoff_max_seconds=300, publish_timeout_seconds=60)
TORCHRUN_FAILURE = """error: dataset.train: column 'text' not found; columns are [review, label]
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : 2 (pid: 123)
============================================================"""


def spec(**over: Any) -> dict[str, Any]:
    base = {
        "model": {"name": "bert-base-uncased"},
        "dataset": {"train": "s3://data/train.csv"},
        "resources": {"nodes": 2},
        "checkpoint": {"storage": "s3://ckpt"},
        "backoffLimit": 2,
    }
    base.update(over)
    return base


def worker(rank: int, attempt: int = 1, phase: str = "Running", **kw: Any) -> PodView:
    return PodView(f"sentiment-a{attempt}-{rank}", "trainer", attempt=attempt, rank=rank, phase=phase, **kw)


def exporter(n: int = 1, phase: str = "Running", **kw: Any) -> PodView:
    return PodView(f"sentiment-export-{n}", "exporter", export=n, phase=phase, **kw)


def job_name(p: PodView) -> str:
    if p.component == "exporter":
        return f"sentiment-export-{p.export}"
    return f"sentiment-a{p.attempt}" + ("" if p.member is None else f"-m{p.member}")


def jobs_of(pods: list[PodView], nodes: int = 2, **over: Any) -> list[JobView]:
    """The Jobs of these pods as the Job controller reports them (``over``: fields set on every Job)."""
    groups: dict[str, list[PodView]] = {}
    for p in pods:
        groups.setdefault(job_name(p), []).append(p)
    views = []
    for name, members in groups.items():
        p = members[0]
        size = 1 if p.component == "exporter" else nodes
        failed = [m for m in members if m.phase == "Failed"]
        code = next((m.exit_code for m in failed if m.exit_code is not None), None)
        fields: dict[str, Any] = dict(
            name=name, component=p.component, uid=f"uid-{name}", attempt=p.attempt, member=p.member, export=p.export,
            owner_uid=META.uid, failed=bool(failed),
            failed_reason="PodFailurePolicy" if code == 2 else "BackoffLimitExceeded" if failed else "",
            complete=sum(m.phase == "Succeeded" for m in members) >= size,
        )  # fmt: skip
        views.append(JobView(**{**fields, **over}))
    return views


def owned_by_jobs(pods: list[PodView]) -> list[PodView]:
    return [p if p.owner_uid else dataclasses.replace(p, owner_uid=f"uid-{job_name(p)}") for p in pods]


def step(status: dict | None, pods: list[PodView] = (), *, at: float = 0, s: dict | None = None,
         progress: dict | None = None, served: Served | None = None, jobs: list[JobView] | None = None,
         admissions: dict[str, Admission] | None = None, meta: JobMeta = META) -> Decision:  # fmt: skip
    pods = owned_by_jobs(list(pods))
    observed = Observed(pods=pods, jobs=jobs_of(pods) if jobs is None else jobs, progress=progress, served=served,
                        admissions=admissions or {})  # fmt: skip
    return L.reconcile(meta, s or spec(), status, observed, T0 + timedelta(seconds=at), SETTINGS)


def created(d: Decision) -> list[str]:
    return [f"{o['kind']}/{o['metadata']['name']}" for o in d.create]


def condition(status: dict, kind: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == kind)


def running(at: float = 5) -> dict:
    d = step(None)
    return step(d.status, [worker(0), worker(1)], at=at).status


def test_a_new_job_creates_its_worker_group_and_is_pending() -> None:
    d = step(None)
    assert created(d) == ["ConfigMap/sentiment-a1-config", "Service/sentiment-workers", "Job/sentiment-a1"]
    assert d.status["phase"] == "Pending" and d.status["attempt"] == 1 and d.status["restarts"] == 0
    assert d.status["observedGeneration"] == 1 and d.status["startTime"] == "2026-01-01T12:00:00Z"
    assert [(e.reason, e.type) for e in d.events] == [("Created", "Normal")]
    assert condition(d.status, "Training")["status"] == "True"


def test_all_workers_running_makes_the_job_running_with_conditions() -> None:
    d = step(None)
    d2 = step(d.status, [worker(0), worker(1, phase="Pending")], at=1)
    assert d2.status["phase"] == "Pending" and not d2.create
    d3 = step(d2.status, [worker(0), worker(1)], at=2)
    assert d3.status["phase"] == "Running"
    cond = condition(d3.status, "Training")
    assert cond["reason"] == "Running" and cond["observedGeneration"] == 1
    assert [e.reason for e in d3.events] == ["Running"]
    assert step(d3.status, [worker(0), worker(1)], at=3).events == []


def test_progress_and_metrics_come_from_progress_json() -> None:
    status = running()
    progress = {"phase": "training", "step": 30, "totalSteps": 120, "epoch": 0.5, "percent": 25.0,
                "etaSeconds": 90.0, "metrics": {"loss": 0.41, "samples_per_second": 55.5}}  # fmt: skip
    d = step(status, [worker(0), worker(1)], at=6, progress=progress)
    assert d.status["progress"] == {"step": 30, "totalSteps": 120, "epoch": 0.5, "percent": 25.0,
                                    "etaSeconds": 90.0, "samplesPerSecond": 55.5}  # fmt: skip
    assert d.status["metrics"] == {"loss": 0.41}
    evaluated = {**progress, "metrics": {"accuracy": 0.91, "f1_macro": 0.9, "eval": 1.0}}
    d2 = step(d.status, [worker(0), worker(1)], at=7, progress=evaluated)
    assert d2.status["metrics"] == {"loss": 0.41, "accuracy": 0.91, "f1_macro": 0.9}



def test_non_finite_metrics_never_reach_status() -> None:
    """A real API server answers 400 to a status holding NaN, and the job's status never advances again."""
    progress = {"phase": "training", "step": 30, "totalSteps": 120, "epoch": float("nan"), "percent": 25.0,
                "etaSeconds": float("inf"), "metrics": {"loss": float("nan"), "grad_norm": float("inf"),
                                                         "learning_rate": 1e-4}}  # fmt: skip
    d = step(running(), [worker(0), worker(1)], at=6, progress=progress)
    assert d.status["metrics"] == {"learning_rate": 1e-4}
    assert d.status["progress"]["step"] == 30 and "etaSeconds" not in d.status["progress"]
    json.dumps(d.status, allow_nan=False)


def trainer_config(d: Decision) -> dict:
    (cm,) = [o for o in d.create if o["kind"] == "ConfigMap"]
    return json.loads(cm["data"]["trainer.json"])


def test_storage_is_keyed_by_the_uid_so_a_job_created_again_starts_fresh() -> None:
    d = step(None)
    assert d.status["storage"] == "s3://ckpt/ml/sentiment/uid-1"
    assert trainer_config(d)["jobUid"] == "uid-1"
    assert trainer_config(d)["outputUri"] == "s3://ckpt/ml/sentiment/uid-1/model-output"
    again = L.reconcile(JobMeta("sentiment", "ml", "uid-2"), spec(), None, Observed(), T0, SETTINGS)
    assert again.status["storage"] == "s3://ckpt/ml/sentiment/uid-2"


def test_a_job_an_older_operator_started_keeps_the_name_keyed_layout() -> None:
    status = running()
    del status["storage"]
    d = step(status, [worker(0, phase="Failed", exit_code=1), worker(1)], at=10)
    d = step(d.status, [worker(0, phase="Failed", exit_code=1)], at=20)
    cfg = trainer_config(d)
    assert cfg["jobUid"] is None and cfg["outputUri"] == "s3://ckpt/ml/sentiment/model-output"
    assert "storage" not in d.status

def test_a_failed_worker_restarts_the_whole_group_after_backoff_from_the_checkpoint() -> None:
    status = running()
    d = step(status, [worker(0, phase="Failed", exit_code=1), worker(1)], at=10)
    assert d.status["phase"] == "Restarting" and d.status["reason"] == "WorkerFailed"
    assert d.status["restarts"] == 1 and d.status["attempt"] == 2 and d.restarted
    assert d.delete == []  # the failed Job has stopped its other pods itself; its failed pod is kept for its logs
    assert d.status["retryAfter"] == "2026-01-01T12:00:20Z" and d.requeue == 10
    assert d.events[0].type == "Warning" and "restart 1/2 as attempt 2 in 10s" in d.events[0].message
    # The old group is still stopping: nothing new yet.
    d2 = step(d.status, [worker(0, phase="Failed", exit_code=1), worker(1, deleting=True)], at=12)
    assert not d2.create and d2.requeue == 1.0
    # Old group gone but the backoff has not passed.
    d3 = step(d2.status, [worker(0, phase="Failed", exit_code=1)], at=15)
    assert not d3.create and d3.requeue == pytest.approx(5)
    d4 = step(d3.status, [worker(0, phase="Failed", exit_code=1)], at=20)
    assert created(d4) == ["ConfigMap/sentiment-a2-config", "Service/sentiment-workers", "Job/sentiment-a2"]
    assert "retryAfter" not in d4.status and d4.status["phase"] == "Restarting"
    d5 = step(d4.status, [worker(0, 2), worker(1, 2)], at=21)
    assert d5.status["phase"] == "Running" and d5.status["restarts"] == 1


def test_a_pod_stuck_terminating_past_its_grace_period_is_force_deleted_so_the_group_can_restart() -> None:
    """A lost node: its pod was deleted (by the taint eviction) but no kubelet ever confirms it."""
    status = running()
    d = step(status, [worker(0, phase="Failed", exit_code=1), worker(1)], at=10)
    ends = "2026-01-01T12:00:30Z"  # deletionTimestamp: the grace period ends at T0+30s
    stuck = worker(1, deleting=True, deletion_time=ends)
    within = step(d.status, [worker(0, phase="Failed", exit_code=1), stuck], at=60)
    assert within.force_delete == [] and not within.create  # 30 s past its grace period: still waiting
    overdue = step(d.status, [worker(0, phase="Failed", exit_code=1), stuck], at=95)
    assert overdue.force_delete == ["sentiment-a1-1"] and not overdue.create
    assert any(e.reason == "ForceDeleted" and e.type == "Warning" for e in overdue.events)
    gone = step(overdue.status, [worker(0, phase="Failed", exit_code=1)], at=96)
    assert "Job/sentiment-a2" in created(gone)


def test_backoff_doubles_and_is_capped() -> None:
    assert [SETTINGS.backoff(n) for n in range(7)] == [10, 20, 40, 80, 160, 300, 300]


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        (worker(1, phase="Failed", exit_code=137, reason="OOMKilled"), "OOMKilled"),
        (worker(1, phase="Failed", exit_code=143), "Killed"),
        (worker(1, phase="Failed", exit_code=137), "Killed"),
    ],
)
def test_retryable_failures_restart(pod: PodView, reason: str) -> None:
    d = step(running(), [worker(0), pod], at=10)
    assert d.status["phase"] == "Restarting" and d.status["reason"] == reason and d.status["restarts"] == 1


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        (worker(1, disrupted="EvictionByEvictionAPI", disrupted_message="Eviction API: evicting"), "Disrupted"),
        (worker(1, deleting=True, disrupted="DeletionByTaintManager"), "Disrupted"),
        (worker(1, phase="Failed", reason="Evicted", message="The node was low on memory."), "Evicted"),
        (worker(1, phase="Unknown"), "NodeLost"),
    ],
)
def test_disruptions_restart_at_once_without_spending_the_backoff_limit(pod: PodView, reason: str) -> None:
    """An eviction, a drain or a lost node is not the job's failure: the group is replaced from the latest
    checkpoint at once, and backoffLimit is untouched."""
    d = step(running(), [worker(0), pod], at=10)
    assert (d.status["phase"], d.status["reason"]) == ("Restarting", reason)
    assert d.status["restarts"] == 0 and d.status["disruptions"] == 1 and d.status["attempt"] == 2
    assert "backoffLimit is not spent" in d.status["message"] and d.restarted
    # The group is stopped (the Job may not have failed yet) and the next one starts once its pods are gone.
    assert d.delete == ([] if pod.phase == "Failed" else [("jobs", "sentiment-a1")])
    later = step(d.status, [], at=11)
    assert "Job/sentiment-a2" in created(later) and later.status["restarts"] == 0


def test_a_deleted_pod_is_judged_by_its_job() -> None:
    """A pod being deleted is not a failure yet: its Job says (a user's `kubectl delete pod` fails it; a Kueue
    preemption suspends it)."""
    d = step(running(), [worker(0), worker(1, deleting=True)], at=10)
    assert d.status["phase"] == "Running" and not d.create and not d.delete
    failed = jobs_of([worker(0)], failed=True, failed_reason="BackoffLimitExceeded",
                     failed_message="Job has reached the specified backoff limit")  # fmt: skip
    d2 = step(d.status, [worker(0), worker(1, deleting=True)], at=11, jobs=failed)
    assert d2.status["phase"] == "Restarting" and d2.status["restarts"] == 1


def test_a_job_that_failed_after_its_pods_went_says_what_its_condition_says() -> None:
    said = "Container trainer for pod ml/sentiment-a1-0-x7k2p failed with exit code 2 matching FailJob rule at index 0"
    d = step(running(), [], at=10, jobs=jobs_of([worker(0)], failed=True, failed_reason="PodFailurePolicy",
                                                 failed_message=said))  # fmt: skip
    assert (d.status["phase"], d.status["reason"]) == ("Failed", "InvalidInput") and said in d.status["message"]
    timeout = jobs_of([worker(0)], failed=True, failed_reason="DeadlineExceeded", failed_message="Job was active "
                      "longer than specified deadline")  # fmt: skip
    d2 = step(running(), [], at=10, jobs=timeout)
    assert (d2.status["phase"], d2.status["reason"]) == ("Failed", "DeadlineExceeded")


def test_a_worker_job_deleted_by_someone_is_created_again() -> None:
    d = step(running(), [], at=10, jobs=[])
    assert created(d) == ["ConfigMap/sentiment-a1-config", "Service/sentiment-workers", "Job/sentiment-a1"]
    assert d.status["attempt"] == 1 and d.status["restarts"] == 0


@pytest.mark.parametrize("exit_code", [2, 1])  # 1: torchrun's own code when a worker exits 2
def test_bad_input_fails_at_once_with_the_trainers_error_line(exit_code: int) -> None:
    pod = worker(0, phase="Failed", exit_code=exit_code, message=TORCHRUN_FAILURE)
    d = step(running(), [pod, worker(1)], at=10)
    assert d.status["phase"] == "Failed" and d.status["reason"] == "InvalidInput"
    assert "column 'text' not found; columns are [review, label]" in d.status["message"]
    assert d.status["restarts"] == 0 and not d.restarted and not d.create
    assert d.delete == []  # the Job's pod failure policy has failed it: the Job controller stops the rest
    assert condition(d.status, "Failed")["status"] == "True" and d.status["completionTime"]
    # Terminal: no retry storm later either.
    assert not step(d.status, [pod], at=60).create


@pytest.mark.parametrize(("code", "reason", "permanent"), [(2, "InvalidInput", True), (3, "StorageUnavailable", False)])
def test_the_trainers_termination_message_names_the_workers_exit_code(code: int, reason: str, permanent: bool) -> None:
    """On a cluster the kubelet gives the termination message, not the log: torchrun exits 1 and only the
    trainer's `exitcode:` line says whether retrying can help."""
    message = f"error: dataset.train: no such file s3://data/train.csv\nexitcode: {code}"
    pod = worker(0, phase="Failed", exit_code=1, message=message)
    d = step(running(), [pod, worker(1)], at=10)
    assert d.status["reason"] == reason
    assert d.status["phase"] == ("Failed" if permanent else "Restarting")
    assert "no such file s3://data/train.csv" in d.status["message"] and "exitcode" not in d.status["message"]


def test_the_backoff_limit_ends_in_failed() -> None:
    status = running()
    status.update(restarts=2, attempt=3)
    d = step(status, [worker(0, 3, phase="Failed", exit_code=1), worker(1, 3)], at=10)
    assert d.status["phase"] == "Failed" and d.status["reason"] == "BackoffLimitExceeded"
    assert "backoffLimit 2" in d.status["message"]


def test_suspend_deletes_the_workers_and_resume_starts_a_new_attempt() -> None:
    status = running()
    d = step(status, [worker(0), worker(1)], at=10, s=spec(suspend=True))
    assert d.status["phase"] == "Suspended" and d.delete == [("jobs", "sentiment-a1")]
    assert condition(d.status, "Suspended")["status"] == "True"
    d2 = step(d.status, [worker(0, deleting=True)], at=11, s=spec(suspend=False))
    assert not d2.create  # the old worker is still writing its final checkpoint
    d3 = step(d2.status, [], at=12, s=spec(suspend=False))
    assert d3.status["phase"] == "Pending" and d3.status["reason"] == "Resumed"
    assert d3.status["attempt"] == 2 and d3.status["restarts"] == 0
    assert "Job/sentiment-a2" in created(d3)


def test_a_job_created_suspended_waits_without_pods() -> None:
    d = step(None, s=spec(suspend=True))
    assert d.status["phase"] == "Suspended" and not d.create and "startTime" not in d.status


def test_active_deadline_fails_the_job() -> None:
    s = spec(activeDeadlineSeconds=60)
    d = step(None, s=s)
    assert d.requeue == 60
    (workers,) = [c for c in d.create if c["kind"] == "Job"]
    assert workers["spec"]["activeDeadlineSeconds"] == 60  # the Job controller enforces it too
    d2 = step(d.status, [worker(0), worker(1)], at=61, s=s)
    assert d2.status["phase"] == "Failed" and d2.status["reason"] == "DeadlineExceeded"
    assert d2.delete == [("jobs", "sentiment-a1")]


QUEUED_META = dataclasses.replace(META, labels={"kueue.x-k8s.io/queue-name": "team-a"})
NO_QUOTA = Admission(False, "Pending", "couldn't assign flavors to pod set main: insufficient quota for cpu in "
                     "flavor default, request > maximum capacity (24 > 8)")  # fmt: skip


def queued_step(status: dict | None, pods: list[PodView] = (), *, suspended: bool, at: float,
                said: Admission | None = None, s: dict | None = None) -> Decision:  # fmt: skip
    group = jobs_of([worker(0, attempt=(status or {}).get("attempt") or 1)], suspended=suspended, queued=True)
    return step(status, pods, at=at, jobs=group, meta=QUEUED_META, s=s,
                admissions={"sentiment-a1": said} if said else None)  # fmt: skip


def test_a_job_with_a_queue_name_waits_queued_with_kueues_reason_then_runs_when_admitted() -> None:
    d = step(None, meta=QUEUED_META)
    (workers,) = [c for c in d.create if c["kind"] == "Job"]
    assert workers["spec"]["suspend"] is True and workers["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert (d.status["phase"], d.status["reason"]) == ("Queued", "Queued") and "queue team-a" in d.status["message"]
    assert condition(d.status, "Queued")["status"] == "True" and "activeSince" not in d.status
    d2 = queued_step(d.status, suspended=True, at=5, said=NO_QUOTA)
    assert (d2.status["phase"], d2.status["reason"]) == ("Queued", "Pending")
    assert "insufficient quota for cpu" in d2.status["message"] and not d2.create and not d2.delete
    d3 = queued_step(d2.status, [worker(0, phase="Pending"), worker(1, phase="Pending")], suspended=False, at=100)
    assert (d3.status["phase"], d3.status["reason"]) == ("Pending", "Admitted")
    assert d3.status["activeSince"] == "2026-01-01T12:01:40Z"
    d4 = queued_step(d3.status, [worker(0), worker(1)], suspended=False, at=101)
    assert d4.status["phase"] == "Running"


def test_preempted_by_kueue_the_job_goes_back_to_queued_and_the_same_job_resumes() -> None:
    """Kueue suspends the Job: its pods stop with a final checkpoint (SIGTERM). Nothing is counted, deleted or
    created: Kueue unsuspends the same Job when it admits it again, and its pods resume from that checkpoint."""
    running_ = queued_step(None, [worker(0), worker(1)], suspended=False, at=1).status
    running_ = queued_step(running_, [worker(0), worker(1)], suspended=False, at=2).status
    assert running_["phase"] == "Running"
    preempted = Admission(False, "Preempted", "Preempted to accommodate a workload (UID: 1) due to prioritization "
                          "in the ClusterQueue", evicted=True)  # fmt: skip
    stopping = [worker(0, phase="Failed", exit_code=143), worker(1, deleting=True)]
    d = queued_step(running_, stopping, suspended=True, at=50, said=preempted)
    assert (d.status["phase"], d.status["reason"]) == ("Queued", "Preempted")
    assert "resumes from it when admitted again" in d.status["message"]
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "Preempted")]
    assert d.status["restarts"] == 0 and d.status["attempt"] == 1 and not d.create and not d.delete
    assert d.status["activeSeconds"] == 48.0 and "activeSince" not in d.status  # admitted at 2 s, preempted at 50 s
    back = queued_step(d.status, [worker(0), worker(1)], suspended=False, at=300)
    assert back.status["phase"] == "Running" and back.status["attempt"] == 1 and back.status["restarts"] == 0
    assert [e.reason for e in back.events] == ["Admitted", "Running"]


def test_active_deadline_counts_only_admitted_time() -> None:
    s = spec(activeDeadlineSeconds=60)
    d = step(None, s=s, meta=QUEUED_META)
    d2 = queued_step(d.status, suspended=True, at=500, said=NO_QUOTA, s=s)
    assert d2.status["phase"] == "Queued"  # 500 s queued: nothing spent
    d3 = queued_step(d2.status, [worker(0), worker(1)], suspended=False, at=510, s=s)
    d4 = queued_step(d3.status, [worker(0), worker(1)], suspended=False, at=560, s=s)
    assert d4.status["phase"] == "Running" and d4.requeue == pytest.approx(10)
    d5 = queued_step(d4.status, [worker(0), worker(1)], suspended=False, at=571, s=s)
    assert (d5.status["phase"], d5.status["reason"]) == ("Failed", "DeadlineExceeded")


def test_training_done_without_serving_succeeds() -> None:
    d = step(running(), [worker(0, phase="Succeeded", exit_code=0), worker(1, phase="Succeeded", exit_code=0)], at=9)
    assert d.status["phase"] == "Succeeded" and d.status["completionTime"] == "2026-01-01T12:00:09Z"
    assert condition(d.status, "Succeeded")["status"] == "True"
    assert condition(d.status, "Training")["status"] == "False"


SERVING = {"enabled": True, "repository": "/models", "tritonUrl": "http://127.0.0.1:8000", "modelName": "sent"}
DONE = [worker(0, phase="Succeeded", exit_code=0), worker(1, phase="Succeeded", exit_code=0)]


def exporting() -> Decision:
    return step(running(), DONE, at=10, s=spec(serving=SERVING))


def test_training_done_exports_then_publishes_and_succeeds_when_triton_serves_the_model() -> None:
    d = exporting()
    assert d.status["phase"] == "Exporting" and created(d) == ["Job/sentiment-export-1"]
    s = spec(serving=SERVING)
    d2 = step(d.status, [*DONE, exporter(running=("publish",))], at=20, s=s)
    assert d2.status["phase"] == "Publishing"
    assert not wants_confirmation(d2.status, [exporter(running=("publish",))])
    assert wants_confirmation(d2.status, [exporter(phase="Succeeded")])
    d3 = step(d2.status, [*DONE, exporter(phase="Succeeded")], at=25, s=s,
              served=Served(ready=False, name="sent", message="loading"))  # fmt: skip
    assert d3.status["phase"] == "Publishing" and d3.requeue
    served = Served(ready=True, name="sent", version=3, endpoint="http://127.0.0.1:8000")
    d4 = step(d3.status, [*DONE, exporter(phase="Succeeded")], at=30, s=s, served=served)
    assert d4.status["phase"] == "Succeeded" and d4.status["reason"] == "ModelReady"
    assert d4.status["model"] == {"repository": "/models", "name": "sent", "version": 3,
                                  "endpoint": "http://127.0.0.1:8000", "ready": True}  # fmt: skip
    assert d4.published_seconds == 20


def test_the_version_to_confirm_is_the_one_the_publish_step_reported() -> None:
    d = exporting()
    said = 'published: {"name":"sent","version":4,"reused":true}'
    assert published_version(d.status, [exporter(phase="Succeeded", exit_code=0, message=said)]) == 4
    assert published_version(d.status, [exporter(phase="Succeeded", exit_code=0)]) is None  # older image
    assert published_version(d.status, [exporter(2, phase="Succeeded", message=said)]) is None  # not the current try
    assert published_version(d.status, [exporter(phase="Succeeded", message="published: {broken")]) is None


def test_publication_that_never_becomes_ready_fails_after_the_timeout() -> None:
    d = exporting()
    s = spec(serving=SERVING)
    d2 = step(d.status, [*DONE, exporter(phase="Succeeded")], at=75, s=s,
              served=Served(ready=False, name="sent", message="model 'sent' is not found"))  # fmt: skip
    assert d2.status["phase"] == "Failed" and d2.status["reason"] == "PublishFailed" and d2.publish_failed
    assert "model 'sent' is not found" in d2.status["message"]


def test_a_failed_export_is_retried_and_bad_input_is_not() -> None:
    d = exporting()
    s = spec(serving=SERVING)
    failed = exporter(phase="Failed", exit_code=1)
    d2 = step(d.status, [*DONE, failed], at=20, s=s)
    assert not d2.create and d2.status["exportAttempt"] == 2 and d2.publish_failed and d2.requeue == 10
    assert d2.events[-1].message.endswith("retrying as export 2 in 10s")
    assert not step(d2.status, [*DONE, failed], at=25, s=s).create, "backing off"
    d2b = step(d2.status, [*DONE, failed], at=30, s=s)
    assert created(d2b) == ["Job/sentiment-export-2"] and "retryAfter" not in d2b.status
    d3 = step(d2b.status, [*DONE, exporter(2, phase="Failed", exit_code=2, message="error: no model.onnx")], s=s)
    assert d3.status["phase"] == "Failed" and "error" not in d3.status["message"][:5]
    assert "no model.onnx" in d3.status["message"]


def test_ttl_after_finished_deletes_jobs_and_config_maps() -> None:
    s = spec(ttlSecondsAfterFinished=30)
    d = step(running(), DONE, at=10, s=s)
    assert d.status["phase"] == "Succeeded"
    d2 = step(d.status, DONE, at=20, s=s)
    assert not d2.delete and d2.requeue == 20
    d3 = step(d2.status, DONE, at=40, s=s)
    assert sorted(d3.delete) == [("configmaps", "sentiment-a1-config"), ("jobs", "sentiment-a1")]


def test_an_invalid_spec_fails_with_every_field_named() -> None:
    d = step(None, s=spec(hyperparameters={"learningRate": 5}, resources={"nodes": 0}))
    assert d.status["phase"] == "Failed" and d.status["reason"] == "InvalidSpec" and not d.create
    assert "spec.hyperparameters.learningRate: expected a number less than 1.0, got 5" in d.status["message"]
    assert "spec.resources.nodes: expected a number of at least 1, got 0" in d.status["message"]


def test_a_job_without_checkpoint_storage_cannot_run_on_a_cluster() -> None:
    d = step(None, s=spec(checkpoint={}))
    assert d.status["phase"] == "Failed" and "spec.checkpoint.storage: required on a cluster" in d.status["message"]


def test_condition_transition_times_change_only_with_their_status() -> None:
    d = step(None)
    first = condition(d.status, "Training")["lastTransitionTime"]
    d2 = step(d.status, [worker(0), worker(1)], at=30)
    assert condition(d2.status, "Training")["lastTransitionTime"] == first
    assert condition(d2.status, "Training")["reason"] == "Running"


def test_generation_is_observed() -> None:
    d = L.reconcile(JobMeta("sentiment", "ml", "u", generation=7), spec(), None, Observed(), T0, SETTINGS)
    assert d.status["observedGeneration"] == 7
    assert all(c["observedGeneration"] == 7 for c in d.status["conditions"])


def test_pod_view_reads_exit_codes_and_messages_from_container_statuses() -> None:
    pod = {
        "metadata": {
            "name": "sentiment-export-1",
            "labels": {"app.kubernetes.io/component": "exporter", "finetune.dev/export": "1"},
        },
        "status": {
            "phase": "Failed",
            "initContainerStatuses": [{"name": "export", "state": {"terminated": {"exitCode": 0}}}],
            "containerStatuses": [
                {
                    "name": "publish",
                    "state": {
                        "terminated": {"exitCode": 2, "reason": "Error", "message": "error: repository not writable"}
                    },
                }
            ],
        },
    }
    view = pod_view(pod)
    assert (view.component, view.export, view.exit_code, view.failed_container) == ("exporter", 1, 2, "publish")
    assert classify(view).permanent


def test_a_running_job_whose_step_counter_stops_is_flagged_stalled_and_cleared_when_it_moves() -> None:
    s = spec(progressDeadlineSeconds=60)
    at_step = lambda n: {"phase": "training", "step": n, "totalSteps": 100}  # noqa: E731
    d = step(step(None, s=s).status, [worker(0), worker(1)], at=1, s=s, progress=at_step(3))
    assert d.status["phase"] == "Running" and d.requeue == pytest.approx(60)
    d2 = step(d.status, [worker(0), worker(1)], at=40, s=s, progress=at_step(3))
    assert not any(c["type"] == "Stalled" for c in d2.status["conditions"])
    d3 = step(d2.status, [worker(0), worker(1)], at=62, s=s, progress=at_step(3))
    stalled = condition(d3.status, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "NoProgress")
    assert "step 3 has not moved for 61s while 2 worker pod(s) run" in stalled["message"]
    assert [(e.type, e.reason) for e in d3.events] == [("Warning", "Stalled")]
    assert d3.status["phase"] == "Running"  # a condition beside the phase, not a failure
    d4 = step(d3.status, [worker(0), worker(1)], at=70, s=s, progress=at_step(4))
    assert condition(d4.status, "Stalled")["status"] == "False" and [e.reason for e in d4.events] == ["Progressing"]


def test_kueues_workload_conditions_say_why_a_job_waits() -> None:
    from finetune_operator.observed import admission

    pending = {"status": {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Pending",
                                          "message": "couldn't assign flavors to pod set main: insufficient quota"}]}}
    assert admission(pending) == Admission(False, "Pending", "couldn't assign flavors to pod set main: insufficient "
                                           "quota")  # fmt: skip
    evicted = {"status": {"conditions": [
        {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "waiting"},
        {"type": "Evicted", "status": "True", "reason": "Preempted", "message": "Preempted to accommodate a workload"},
    ]}}  # fmt: skip
    assert admission(evicted) == Admission(False, "Preempted", "Preempted to accommodate a workload", evicted=True)
    admitted = {"status": {"conditions": [{"type": "Admitted", "status": "True", "reason": "Admitted", "message": ""},
                                          {"type": "Evicted", "status": "False", "reason": "Preempted"}]}}
    assert admission(admitted).admitted and admission({}) == Admission(False, "Pending", "waiting for Kueue")
