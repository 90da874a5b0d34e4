"""FineTuneJobs under the real Kueue, with the operator in-cluster from its chart: a job labelled with a queue
waits Queued with Kueue's reason until its whole worker group fits, then runs; a higher-priority job preempts
a running one, which goes back to Queued and, readmitted, resumes from the checkpoint its workers wrote on
SIGTERM: no step lost, no restart spent. A bad dataset fails once, without retries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import INDEX, get_json, step, uploaded_job, wait_status
from tests.cluster.test_finetunejob_api import columns
from tests.fixtures.kube import KubeApi
from tests.fixtures.kubelet import NodePool
from tests.fixtures.kueue import PRIORITY_LABEL, QUEUE_LABEL, Kueue, delete_queues, priority_classes, queues, set_quota
from tests.fixtures.s3 import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.cluster_long]


def condition(s: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in s.get("conditions") or [] if c["type"] == kind)


@pytest.fixture
def queue(release: KubeApi, kueue: Kueue) -> Any:
    """A ClusterQueue and LocalQueue named after the test's namespace, removed at the end."""
    made = queues(release, release.namespace, "1", "8Gi")
    yield made
    delete_queues(release, release.namespace)


def queued_job(name: str, queue: str, s3: S3Server, model: Path, csv: tuple[Path, Path],
               priority: str | None = None) -> dict[str, Any]:  # fmt: skip
    job = uploaded_job(name, s3, model, csv)
    job["metadata"]["labels"] = {QUEUE_LABEL: queue, **({PRIORITY_LABEL: priority} if priority else {})}
    return job


def test_a_queued_job_waits_with_kueues_reason_then_runs_as_one_gang(
    release: KubeApi, queue: dict, s3_server: S3Server, kube_nodes: NodePool | None, tiny_bert: Path,
    sentiment_csv: tuple[Path, Path],
):  # fmt: skip
    kube = release
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(queued_job("gang", kube.namespace, s3_server, tiny_bert,
                                                                 sentiment_csv)))  # fmt: skip
    # Two workers of one cpu each under a quota of one: nothing starts, not even one pod.
    waiting = wait_status(kube, "gang", lambda s: s.get("phase") == "Queued" and s.get("reason") == "Pending", 90,
                   "Queued with Kueue's reason", kube_nodes)  # fmt: skip
    assert "insufficient quota for cpu" in waiting["message"], waiting
    assert condition(waiting, "Queued")["status"] == "True"
    row = columns(*kube.kubectl("get", "ftj", "gang").stdout.splitlines())
    assert (row["PHASE"], row["REASON"]) == ("Queued", "Pending")
    (workers,) = get_json(kube, "jobs", "-l", "finetune.dev/job=gang")["items"]
    assert workers["spec"]["suspend"] is True and workers["metadata"]["labels"][QUEUE_LABEL] == kube.namespace
    assert get_json(kube, "pods", "-l", "finetune.dev/job=gang")["items"] == []
    assert "activeSince" not in waiting

    set_quota(kube, queue, "2")  # room for the whole gang: admitted at once, both pods together
    final = wait_status(kube, "gang", lambda s: s.get("phase") in ("Succeeded", "Failed"), 420, "the job finished",
                 kube_nodes)  # fmt: skip
    assert final["phase"] == "Succeeded" and final["restarts"] == 0, final
    reasons = [e["reason"] for e in get_json(kube, "events", "--field-selector", "involvedObject.name=gang")["items"]]
    assert "Queued" in reasons and "Admitted" in reasons and "Running" in reasons, reasons
    workload = get_json(kube, "workloads")["items"]
    assert any(w["spec"]["podSets"][0]["count"] == 2 for w in workload), workload  # one gang of two pods


def test_a_preempted_job_goes_back_to_queued_and_resumes_with_no_step_lost(
    release: KubeApi, queue: dict, s3_server: S3Server, kube_nodes: NodePool | None, tiny_bert: Path,
    sentiment_csv: tuple[Path, Path],
):  # fmt: skip
    kube = release
    priority_classes(kube, **{f"{kube.namespace}-low": 10, f"{kube.namespace}-high": 1000})
    set_quota(kube, queue, "2")  # one job's worker group at a time
    low = queued_job("low", kube.namespace, s3_server, tiny_bert, sentiment_csv, f"{kube.namespace}-low")
    low["spec"]["hyperparameters"].update(maxSteps=200, evalSteps=100)
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(low))
    before = wait_status(kube, "low", lambda s: s.get("phase") == "Running" and step(s) >= 25, 300,
                  "the low-priority job training past its first checkpoint", kube_nodes)  # fmt: skip

    high = queued_job("high", kube.namespace, s3_server, tiny_bert, sentiment_csv, f"{kube.namespace}-high")
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(high))
    preempted = wait_status(kube, "low", lambda s: s.get("phase") == "Queued" and s.get("reason") == "Preempted", 120,
                     "the low-priority job preempted", kube_nodes)  # fmt: skip
    assert "resumes from it when admitted again" in preempted["message"], preempted
    assert preempted["restarts"] == 0 and preempted["attempt"] == 1
    at_preemption = step(preempted)
    assert at_preemption >= step(before)

    done = wait_status(kube, "high", lambda s: s.get("phase") in ("Succeeded", "Failed"), 420, "the high-priority job "
                "finished", kube_nodes)  # fmt: skip
    assert done["phase"] == "Succeeded", done
    final = wait_status(kube, "low", lambda s: s.get("phase") in ("Succeeded", "Failed"), 600,
                 "the low-priority job readmitted and finished", kube_nodes)  # fmt: skip
    assert final["phase"] == "Succeeded", final
    assert final["restarts"] == 0 and final["attempt"] == 1 and final.get("disruptions", 0) == 0, final
    # Readmitted, the same Job's new pods resumed from the checkpoint written on SIGTERM: at or past the step the
    # operator last reported before the preemption.
    log = kube.kubectl("logs", "-l", f"finetune.dev/job=low,{INDEX}=0", "--tail=-1", check=False).stdout
    resumed = [int(line.split("resumed from checkpoint at step ")[1].split()[0]) for line in log.splitlines()
               if "resumed from checkpoint at step " in line]  # fmt: skip
    assert resumed and resumed[-1] >= at_preemption, (resumed, at_preemption, log[-3000:])
    reasons = [e["reason"] for e in get_json(kube, "events", "--field-selector", "involvedObject.name=low")["items"]]
    assert "Preempted" in reasons, reasons


def test_a_bad_dataset_fails_once_without_retries(
    release: KubeApi, s3_server: S3Server, kube_nodes: NodePool | None, tiny_bert: Path, tmp_path: Path,
    sentiment_csv: tuple[Path, Path],
):  # fmt: skip
    kube = release
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("review,stars\ngood,5\nbad,1\n")
    job = uploaded_job("baddata", s3_server, tiny_bert, (wrong, sentiment_csv[1]))
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(job))
    final = wait_status(kube, "baddata", lambda s: s.get("phase") in ("Succeeded", "Failed"), 300, "the job failed",
                 kube_nodes)  # fmt: skip
    assert (final["phase"], final["reason"]) == ("Failed", "InvalidInput"), final
    assert "text" in final["message"], final  # the trainer's error names the missing column
    assert final["restarts"] == 0 and final["attempt"] == 1, final
    (workers,) = get_json(kube, "jobs", "-l", "finetune.dev/job=baddata")["items"]  # one attempt, no second Job
    failed = next(c for c in workers["status"]["conditions"] if c["type"] == "Failed")
    # torchrun exits 1 whatever its worker's code; the launcher exits with the trainer's `exitcode: 2`, so the
    # Job's own pod failure policy fails it at once on the bad input.
    assert failed["reason"] == "PodFailurePolicy" and "exit code 2" in failed["message"], failed
