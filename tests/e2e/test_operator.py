"""The real operator (`python -m finetune_operator`) against the API stand-in, with pods run by the node agent:
real torchrun (2 processes), real checkpoints, real export and publication into a Triton served by the test.

Three jobs carry all assertions (each training run is the expensive part):
- test_job_from_apply_to_served_model: progress, operator killed and restarted mid-run, export, publication,
  Succeeded with status.model, operator metrics, deletion garbage-collects every child.
- test_worker_crash_and_suspend_resume_continue_from_checkpoints (checkpoints on a real S3 server, credentials
  from a Secret): a worker killed -> Restarting -> resumed; suspend -> pods gone; resume -> continues from the
  checkpoint -> Succeeded.
- test_bad_dataset_fails_once_with_the_trainers_reason: Failed, the trainer's error line, no retries.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator import cli
from tests.e2e.conftest import Jobs, Operator, cluster_checkpoint_spec, phase_is, real_cluster
from tests.fixtures.kube import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420), pytest.mark.usefixtures("job_controller")]


def stepped(minimum: int):
    return lambda s: s.get("phase") == "Running" and ((s.get("progress") or {}).get("step") or 0) >= minimum


def active_trainers(jobs: Jobs, name: str) -> list[Any]:
    pods = jobs.pods(name)
    return [p for p in pods if p.status.phase in ("Pending", "Running") and not p.metadata.deletion_timestamp]


def trainer_log(jobs: Jobs, pod: str) -> str:
    return jobs.log(pod)


def test_job_from_apply_to_served_model(operator: Operator, jobs: Jobs, job_manifest, serving_target) -> None:
    name = "sentiment"
    # Long enough that the operator sees it mid-run on a fast machine (it reads progress every second):
    # 150 steps of 64 examples take 15 s or more, where batches of 8 can be done in 2 s.
    manifest = job_manifest(name, max_steps=150, every=25, serving=serving_target.serving)
    manifest["spec"]["hyperparameters"]["batchSize"] = 64
    jobs.create(manifest)

    with_eta = stepped(10)
    status = jobs.wait(name, lambda s: with_eta(s) and "etaSeconds" in s["progress"], 180, "progress", operator)
    progress = status["progress"]
    assert progress["totalSteps"] == 150 and 0 < progress["percent"] <= 100 and progress["etaSeconds"] >= 0
    assert status["attempt"] == 1 and status["restarts"] == 0
    assert "loss" in status["metrics"]
    assert "finetune.dev/finalizer" in jobs.get(name)["metadata"]["finalizers"]
    before = {p.metadata.name: p.metadata.uid for p in jobs.pods(name)}
    assert sorted(before) == ["sentiment-a1-0"]

    # The operator dies mid-run (SIGKILL, no cleanup) and comes back: it adopts the running pods.
    operator.kill()
    operator.start()
    final = jobs.wait(name, phase_is("Succeeded", "Failed"), 300, "finished", operator)
    after = {p.metadata.name: p.metadata.uid for p in jobs.pods(name)}
    assert after == before, "the restarted operator created or replaced worker pods"
    assert final["phase"] == "Succeeded", final
    assert final["restarts"] == 0 and final["progress"]["percent"] == 100.0
    assert final["metrics"]["accuracy"] >= 0.75, final["metrics"]
    serving_target.check(final)
    reasons = [e.split(":")[0] for e in jobs.events(name)]
    for expected in ("Created", "Running", *serving_target.reasons):
        assert expected in reasons, reasons
    scraped = operator.scrape()
    assert f'finetune_operator_jobs{{namespace="{jobs.kube.namespace}",phase="Succeeded"}} 1.0' in scraped
    assert f'finetune_operator_job_info{{job="{name}",namespace="{jobs.kube.namespace}",phase="Succeeded"}}' in scraped

    # Delete: the finalizer deletes every child, then the job goes.
    assert any(jobs.children(name).values())
    jobs.delete(name)
    eventually(lambda: not jobs.exists(name), timeout=60, what="job deleted")
    eventually(lambda: not any(jobs.children(name).values()), timeout=60, what="children garbage-collected")


@pytest.fixture
def s3_checkpoints(request: pytest.FixtureRequest, jobs: Jobs, operator_env: dict[str, str]) -> dict[str, Any]:
    """Checkpoint storage on a real S3 server: workers get credentials from a Secret, the operator its own."""
    if real_cluster():
        return {**cluster_checkpoint_spec(), "everySteps": 5}
    s3_server = request.getfixturevalue("s3_server")
    jobs.core.create_namespaced_secret(
        jobs.kube.namespace,
        {"metadata": {"name": "s3-credentials"},
         "stringData": {"accessKey": s3_server.access_key, "secretKey": s3_server.secret_key}},
    )  # fmt: skip
    operator_env.update(s3_server.env())
    s3 = {"endpoint": s3_server.endpoint, "region": "us-east-1", "credentialsSecret": "s3-credentials"}
    return {"storage": s3_server.url("checkpoints"), "everySteps": 5, "s3": s3}


def test_worker_crash_and_suspend_resume_continue_from_checkpoints(
    s3_checkpoints: dict[str, Any], operator: Operator, jobs: Jobs, job_manifest, node_agent
) -> None:
    name = "resilient"
    body = job_manifest(name, max_steps=80, every=5)
    body["spec"]["checkpoint"] = s3_checkpoints
    body["spec"]["hyperparameters"]["batchSize"] = 64  # slow enough to crash and suspend it mid-run anywhere
    jobs.create(body)
    jobs.wait(name, stepped(15), 180, "past the first checkpoints", operator)

    # A worker crashes (its processes SIGKILLed; on a real cluster, the pod force-deleted): the group restarts
    # from the latest checkpoint.
    if jobs.kube.stand_in:
        assert node_agent.kill_pod(jobs.kube.namespace, "resilient-a1-0", signal.SIGKILL) >= 1
    else:
        jobs.core.delete_namespaced_pod("resilient-a1-0", jobs.kube.namespace, grace_period_seconds=0)
    restarting = jobs.wait(name, phase_is("Restarting"), 60, "Restarting", operator)
    assert restarting["restarts"] == 1 and restarting["attempt"] == 2
    assert restarting["reason"] == ("Killed" if jobs.kube.stand_in else "PodDeleted")
    jobs.wait(name, lambda s: s.get("phase") == "Running" and s.get("attempt") == 2, 120, "attempt 2", operator)
    eventually(lambda: "resumed from checkpoint at step" in trainer_log(jobs, "resilient-a2-0"), timeout=120,
               what="attempt 2 resumed from a checkpoint")  # fmt: skip
    resumed_at = int(trainer_log(jobs, "resilient-a2-0").split("resumed from checkpoint at step ")[1].split()[0])
    assert resumed_at >= 5  # checkpoints every 5 steps, uploaded in the background

    # Suspend (as Kueue does): workers stop after a final checkpoint; resume continues from it.
    jobs.patch_spec(name, {"suspend": True})
    jobs.wait(name, phase_is("Suspended"), 60, "Suspended", operator)
    eventually(lambda: not active_trainers(jobs, name), timeout=60, what="worker pods gone")
    jobs.patch_spec(name, {"suspend": False})
    jobs.wait(name, lambda s: s.get("attempt") == 3 and s.get("phase") in ("Pending", "Running"), 60, "resumed")
    eventually(lambda: "resumed from checkpoint at step" in trainer_log(jobs, "resilient-a3-0"), timeout=120,
               what="attempt 3 resumed from a checkpoint")  # fmt: skip
    second = int(trainer_log(jobs, "resilient-a3-0").split("resumed from checkpoint at step ")[1].split()[0])
    assert second >= resumed_at, "attempt 3 started over instead of continuing"

    final = jobs.wait(name, phase_is("Succeeded", "Failed"), 240, "finished", operator)
    assert final["phase"] == "Succeeded", final
    assert final["restarts"] == 1 and final["attempt"] == 3
    reasons = [e.split(":")[0] for e in jobs.events(name)]
    assert {restarting["reason"], "Suspended", "Resumed"} <= set(reasons), reasons
    assert 'finetune_operator_restarts_total{job="resilient"' in operator.scrape()


def test_bad_dataset_fails_once_with_the_trainers_reason(
    operator: Operator, jobs: Jobs, job_manifest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Also the cluster CLI: `finetune submit` the job file, `finetune get`, `finetune logs`, `finetune delete`."""
    bad = tmp_path / "bad.csv"
    bad.write_text("review,label\ngreat film,positive\nawful film,negative\n" * 20)
    body = job_manifest("badinput")
    body["spec"]["dataset"] = {"train": os.environ.get("FINETUNE_E2E_BAD_TRAIN") or str(bad)}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(body))
    where = ["--kubeconfig", str(jobs.kube.kubeconfig), "--namespace", jobs.kube.namespace]
    assert cli.main(["submit", str(job_file), *where]) == 0
    assert f"finetunejob.finetune.dev/badinput created in {jobs.kube.namespace}" in capsys.readouterr().out

    final = jobs.wait("badinput", phase_is("Failed", "Succeeded"), 180, "failed", operator)
    assert final["phase"] == "Failed" and final["reason"] == "InvalidInput", final
    assert "text" in final["message"] and "review" in final["message"], final["message"]
    assert final["restarts"] == 0 and final["attempt"] == 1
    failed = next(c for c in final["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["message"] == final["message"]
    assert [p.metadata.name for p in jobs.pods("badinput")] == ["badinput-a1-0"]

    assert cli.main(["get", *where]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "ACCURACY", "RESTARTS", "MODEL"]
    assert table[1].split() == ["badinput", "Failed", "-", "-", "0", "-"]
    assert cli.main(["logs", "badinput", "--rank", "0", *where]) == 0
    assert "error: " in capsys.readouterr().out
    assert cli.main(["delete", "badinput", *where]) == 0
    eventually(lambda: not jobs.exists("badinput"), timeout=60, what="job deleted")
