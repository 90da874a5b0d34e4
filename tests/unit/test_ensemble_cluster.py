"""spec.ensemble on a cluster: one worker group per member (config, pods, rendezvous, storage prefix), one
export pod that exports every member and combines them, and the phase machine and status over all members."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from finetune_operator import api, ensemble_status, names, resources
from finetune_operator import lifecycle as L
from finetune_operator.decision import Decision, JobMeta
from finetune_operator.observed import Observed, PodView, pod_view
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
    pods = [c for c in children if c["kind"] == "Pod"]
    assert [c["metadata"]["name"] for c in configs] == [f"reviews-a4-m{k}-config" for k in range(3)]
    assert [p["metadata"]["name"] for p in pods] == [f"reviews-a4-m{k}-{r}" for k in range(3) for r in range(2)]
    assert len([c for c in children if c["kind"] == "Service"]) == 1
    for k, cm in enumerate(configs):
        cfg = TrainerConfig.model_validate_json(cm["data"]["trainer.json"])
        assert cfg.hyperparameters.seed == [10, 11, 3][k]
        assert cfg.model.name == ["bert-base-uncased", "bert-base-uncased", "roberta-base"][k]
        assert cfg.job_uid == f"{UID}/members/{k}"  # its own checkpoints and progress: resumes on its own
        assert cfg.output_uri == f"s3://ckpt/ml/reviews/{UID}/model-output/members/{k}"
        assert cfg.split_seed == 10  # every member holds out the same rows
        assert cm["metadata"]["labels"][names.MEMBER_LABEL] == str(k)
    hostnames = [p["spec"]["hostname"] for p in pods]
    assert len(set(hostnames)) == 6
    for pod in pods:
        lbl = pod["metadata"]["labels"]
        k, rank = int(lbl[names.MEMBER_LABEL]), int(lbl[names.RANK_LABEL])
        command = pod["spec"]["containers"][0]["command"]
        assert f"--rdzv-id={UID}-4-m{k}" in command
        assert f"--rdzv-endpoint=reviews-workers-{2 * k}.reviews-workers:29400" in command
        assert pod["spec"]["hostname"] == f"reviews-workers-{2 * k + rank}"
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
        assert volume["configMap"]["name"] == f"reviews-a4-m{k}-config"


def test_the_export_pod_exports_each_member_then_combines_then_publishes_once() -> None:
    pod = resources.export_pod(job(), UID, 1, SETTINGS)
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
    spec = {**SPEC, "resources": {"nodes": 8}, "ensemble": {"count": 16}}
    errors = resources.spec_errors(api.parse_job({"metadata": {"name": "x" * 52}, "spec": spec}), SETTINGS)
    assert any("at most 51 characters for 128 worker pods" in e for e in errors), errors  # 16 members x 8 nodes
    assert resources.spec_errors(api.parse_job({"metadata": {"name": "x" * 51}, "spec": spec}), SETTINGS) == []


def pods_of(children: list[dict[str, Any]], phase: str) -> list[PodView]:
    views = [pod_view(c) for c in children if c["kind"] == "Pod"]
    return [PodView(v.name, v.component, attempt=v.attempt, rank=v.rank, member=v.member, phase=phase) for v in views]


def reconcile(status: dict | None, pods: list[PodView], **observed: Any) -> Decision:
    return L.reconcile(META, SPEC, status, Observed(pods=pods, **observed), T0, SETTINGS)


def test_the_phase_machine_waits_for_every_member() -> None:
    first = reconcile(None, [])
    assert [c["metadata"]["name"] for c in first.create if c["kind"] == "Pod"] == [
        f"reviews-a1-m{k}-{r}" for k in range(3) for r in range(2)
    ]
    status = first.status
    running = pods_of(first.create, "Running")
    assert reconcile(status, running).status["phase"] == "Running"
    status = reconcile(status, running).status
    # Two members finished, one still running: still training.
    mixed = [p if p.member == 2 else PodView(p.name, p.component, attempt=1, rank=p.rank, member=p.member,
                                             phase="Succeeded") for p in running]  # fmt: skip
    assert reconcile(status, mixed).status["phase"] == "Running"
    # Member 1's rank 0 vanished: the group restarts (each member resumes from its own checkpoints).
    lost = [p for p in running if (p.member, p.rank) != (1, 0)]
    after = reconcile(status, lost)
    assert after.status["phase"] == "Restarting" and "reviews-a1-m1-0 disappeared" in after.status["message"]
    done = reconcile(status, pods_of(first.create, "Succeeded"))
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
