"""spec.ensemble on a cluster: one worker group per member (config, Job, rendezvous, storage prefix), one
export Job that exports every member and combines them, and the phase machine and status over all members."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from finetune_operator import api, ensemble_status, names, resources
from finetune_operator import lifecycle as L
from finetune_operator.decision import Decision, JobMeta
from finetune_operator.observed import JobView, Observed, PodView
from finetune_operator.settings import Settings
from finetune_trainer.config import TrainerConfig

UID = "0b7c2d3e-1111-4222-8333-444455556666"
SETTINGS = Settings(trainer_image="registry.example/finetune/trainer:0.1.0")
META = JobMeta("reviews", "ml", UID, generation=1)
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "model": {"name": "bert-base-uncased"},
    "dataset": {"train": "s3://data/train.csv"},
    "hyperparameters": {"seed": 10},
    "resources": {"nodes": 2},
    "checkpoint": {"storage": "s3://ckpt"},
    "ensemble": {"members": [{}, {}, {"seed": 3, "model": {"name": "roberta-base"}}]},
    "serving": {"repository": "s3://models", "tritonUrl": "http://triton:8000"},
}


def job(spec: dict[str, Any] = SPEC) -> api.FineTuneJob:
    return api.parse_job({"metadata": {"name": "reviews", "namespace": "ml"}, "spec": spec})


def test_one_worker_group_per_member() -> None:
    children = resources.worker_group(job(), UID, 4, SETTINGS)
    configs = [c for c in children if c["kind"] == "ConfigMap"]
    jobs = [c for c in children if c["kind"] == "Job"]
    assert [c["metadata"]["name"] for c in configs] == [f"reviews-a4-m{k}-config" for k in range(3)]
    assert [j["metadata"]["name"] for j in jobs] == [f"reviews-a4-m{k}" for k in range(3)]
    assert len([c for c in children if c["kind"] == "Service"]) == 1
    for k, cm in enumerate(configs):
        cfg = TrainerConfig.model_validate_json(cm["data"]["trainer.json"])
        assert cfg.hyperparameters.seed == [10, 11, 3][k]
        assert cfg.model.name == ["bert-base-uncased", "bert-base-uncased", "roberta-base"][k]
        assert cfg.job_uid == f"{UID}/members/{k}"  # its own checkpoints and progress: resumes on its own
        assert cfg.output_uri == f"s3://ckpt/ml/reviews/{UID}/model-output/members/{k}"
        assert cfg.split_seed == 10  # every member holds out the same rows
        assert cm["metadata"]["labels"][names.MEMBER_LABEL] == str(k)
    for k, workers in enumerate(jobs):
        assert workers["spec"]["completions"] == 2 and workers["metadata"]["labels"][names.MEMBER_LABEL] == str(k)
        pod = workers["spec"]["template"]
        assert pod["metadata"]["labels"][names.MEMBER_LABEL] == str(k)
        command = pod["spec"]["containers"][0]["command"]
        assert f"--rdzv-id={UID}-4-m{k}" in command
        assert f"--rdzv-endpoint=reviews-a4-m{k}-0.reviews-workers:29400" in command  # its own index-0 pod
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
        assert volume["configMap"]["name"] == f"reviews-a4-m{k}-config"


def test_the_export_pod_exports_each_member_then_combines_then_publishes_once() -> None:
    pod = resources.export_job(job(), UID, 1, SETTINGS)["spec"]["template"]
    steps = pod["spec"]["initContainers"]
    assert [c["name"] for c in steps] == ["export-m0", "export-m1", "export-m2", "combine"]
    for k, step in enumerate(steps[:3]):
        command = step["command"]
        assert command[command.index("--model") + 1] == f"s3://ckpt/ml/reviews/{UID}/model-output/members/{k}/model"
        assert command[command.index("--out") + 1] == f"/workspace/members/{k}/export"
    combine = steps[3]["command"]
    assert [combine[i + 1] for i, a in enumerate(combine) if a == "--member"] == [
        f"/workspace/members/{k}/export" for k in range(3)
    ]
    assert combine[combine.index("--metrics-to") + 1] == f"s3://ckpt/ml/reviews/{UID}/ensemble"
    config = TrainerConfig.model_validate(json.loads(combine[combine.index("--config-json") + 1]))
    assert (config.hyperparameters.seed, config.split_seed) == (10, 10)
    (publish,) = pod["spec"]["containers"]
    assert publish["command"][publish["command"].index("--export") + 1] == "/workspace/export"


def test_member_names_fit_dns_labels() -> None:
    spec = {**SPEC, "resources": {"nodes": 11}, "ensemble": {"count": 10}}
    errors = resources.spec_errors(api.parse_job({"metadata": {"name": "x" * 52}, "spec": spec}), SETTINGS)
    assert any("at most 51 characters for 11 worker pods" in e for e in errors), errors  # <name>-a9999-m9-10
    assert resources.spec_errors(api.parse_job({"metadata": {"name": "x" * 51}, "spec": spec}), SETTINGS) == []


def group(attempt: int, phase: str) -> tuple[list[PodView], list[JobView]]:
    """Every member's Job and its two pods, all in ``phase``."""
    jobs, pods = [], []
    for k in range(3):
        name = f"reviews-a{attempt}-m{k}"
        jobs.append(JobView(name, "trainer", uid=f"uid-{name}", attempt=attempt, member=k, owner_uid=UID,
                            complete=phase == "Succeeded"))  # fmt: skip
        pods += [PodView(f"{name}-{r}-x", "trainer", attempt=attempt, rank=r, member=k, phase=phase,
                         owner_uid=f"uid-{name}") for r in range(2)]  # fmt: skip
    return pods, jobs


def reconcile(status: dict | None, pods: list[PodView], jobs: list[JobView] | None = None, **observed: Any) -> Decision:
    return L.reconcile(META, SPEC, status, Observed(pods=pods, jobs=jobs or [], **observed), T0, SETTINGS)


def test_the_phase_machine_waits_for_every_member() -> None:
    first = reconcile(None, [])
    assert [c["metadata"]["name"] for c in first.create if c["kind"] == "Job"] == [f"reviews-a1-m{k}" for k in range(3)]
    status = first.status
    running, jobs = group(1, "Running")
    assert reconcile(status, running, jobs).status["phase"] == "Running"
    status = reconcile(status, running, jobs).status
    # Two members finished, one still running: still training.
    done_pods, done_jobs = group(1, "Succeeded")
    mixed_jobs = [*done_jobs[:2], jobs[2]]
    mixed = [*done_pods[:4], *running[4:]]
    assert reconcile(status, mixed, mixed_jobs).status["phase"] == "Running"
    # Member 1's Job failed: the whole attempt restarts (each member resumes from its own checkpoints).
    lost = JobView("reviews-a1-m1", "trainer", uid="uid-reviews-a1-m1", attempt=1, member=1, owner_uid=UID,
                   failed=True, failed_reason="BackoffLimitExceeded")
    failed = [jobs[0], lost, jobs[2]]
    after = reconcile(status, running, failed)
    assert after.status["phase"] == "Restarting" and after.status["restarts"] == 1
    assert sorted(after.delete) == [("jobs", "reviews-a1-m0"), ("jobs", "reviews-a1-m2")]
    done = reconcile(status, done_pods, done_jobs)
    assert done.status["phase"] == "Exporting"
    assert [c["metadata"]["name"] for c in done.create] == ["reviews-export-1"]


def test_status_lists_the_members_and_the_ensembles_metrics() -> None:
    status = reconcile(None, []).status
    records = [{"step": 5, "percent": 50.0, "metrics": {"loss": 0.5, "accuracy": 0.8}}, None,
               {"step": 2, "percent": 20.0, "metrics": {"loss": 0.9}}]  # fmt: skip
    running = reconcile(status, [], members=records).status
    assert [(m["index"], m["seed"], m["model"]) for m in running["ensemble"]["members"]] == [
        (0, 10, "bert-base-uncased"), (1, 11, "bert-base-uncased"), (2, 3, "roberta-base")
    ]
    assert running["ensemble"]["members"][0]["metrics"] == {"loss": 0.5, "accuracy": 0.8}
    assert running["ensemble"]["members"][2]["percent"] == 20.0 and "step" not in running["ensemble"]["members"][1]
    combined = {"validation": {"accuracy": 0.9, "f1_macro": 0.85}, "test": {"accuracy": 0.88}, "members": []}
    later = reconcile(running, [], members=records, ensemble_metrics=combined).status
    assert later["ensemble"]["metrics"] == {"validation_accuracy": 0.9, "validation_f1_macro": 0.85,
                                            "test_accuracy": 0.88}  # fmt: skip
    assert later["ensemble"]["method"] == "mean"
    assert later["metrics"]["accuracy"] == 0.9  # what `finetune get` and the Accuracy column show: the ensemble's
    assert ensemble_status.slowest(records) is None  # member 1 has not reported: no job progress yet
    assert ensemble_status.slowest([records[0], records[2]]) == records[2]
    assert ensemble_status.progress_keys(job(), UID)[2] == f"ml/reviews/{UID}/members/2/progress.json"
    assert ensemble_status.metrics_key(job(), UID) == f"ml/reviews/{UID}/ensemble/metrics.json"
