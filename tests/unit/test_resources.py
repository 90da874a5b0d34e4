"""The pure builders: golden manifests for a 1x1, a 2x4 GPU and a CPU job, and the properties every child has.

Regenerate the golden files after an intended change, and review the diff:

    FINETUNE_UPDATE_GOLDEN=1 pytest tests/unit/test_resources.py
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator import api, names, resources
from finetune_operator.settings import Settings
from finetune_trainer.config import TrainerConfig

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UID = "0b7c2d3e-1111-4222-8333-444455556666"
SETTINGS = Settings(trainer_image="registry.example/finetune/trainer:0.1.0")

BASE = {
    "model": {"name": "bert-base-uncased"},
    "dataset": {"train": "s3://data/reviews/train.csv", "validation": "s3://data/reviews/val.csv"},
    "checkpoint": {"storage": "s3://ckpt/jobs", "s3": {"endpoint": "http://minio:9000", "credentialsSecret": "s3"}},
}
JOBS: dict[str, dict[str, Any]] = {
    "job-1x1": {**BASE, "resources": {"nodes": 1, "gpusPerNode": 1}},
    "job-2x4-gpu": {
        **BASE,
        "resources": {"nodes": 2, "gpusPerNode": 4, "cpu": "16", "memory": "64Gi", "shmSize": "8Gi"},
        "hyperparameters": {"precision": "bf16", "batchSize": 32},
        "serving": {
            "enabled": True,
            "repository": "s3://models/triton",
            "tritonUrl": "http://triton:8000",
            "s3": {"endpoint": "http://minio:9000", "credentialsSecret": "models"},
        },
        "template": {
            "nodeSelector": {"nvidia.com/gpu.product": "H100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
            "priorityClassName": "training",
            "imagePullSecrets": ["regcred"],
            "serviceAccountName": "trainer",
        },
    },
    "job-cpu": {**BASE, "resources": {"nodes": 1, "processesPerNode": 2, "cpu": "4", "memory": "8Gi"}},
}


def job(name: str, spec: dict[str, Any], namespace: str = "ml") -> api.FineTuneJob:
    return api.parse_job({"metadata": {"name": name, "namespace": namespace}, "spec": spec})


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the trainer config JSON) as literal blocks, so golden diffs read well."""


_Dumper.add_representer(
    str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None)
)


def render(name: str) -> list[dict[str, Any]]:
    j = job("sentiment", JOBS[name])
    children = resources.worker_group(j, UID, 1, SETTINGS)
    if j.spec.serving.enabled:
        children.append(resources.export_job(j, UID, 1, SETTINGS))
    return children


@pytest.mark.parametrize("name", sorted(JOBS))
def test_golden_manifests(name: str) -> None:
    text = yaml.dump_all(render(name), Dumper=_Dumper, sort_keys=False, width=120)
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("FINETUNE_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run FINETUNE_UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == path.read_text(), f"{path.name} differs: review, then FINETUNE_UPDATE_GOLDEN=1 to accept"


def pods(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pod templates of the Jobs among ``children``: what every pod of that Job is made from."""
    return [c["spec"]["template"] for c in children if c["kind"] == "Job"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_child_is_owned_and_labelled(name: str) -> None:
    for child in render(name):
        meta = child["metadata"]
        assert meta["ownerReferences"] == [
            {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "name": "sentiment", "uid": UID,
             "controller": True, "blockOwnerDeletion": True}
        ]  # fmt: skip
        assert meta["namespace"] == "ml"
        assert meta["labels"]["app.kubernetes.io/name"] == "finetune-operator"
        assert meta["labels"]["finetune.dev/job"] == "sentiment"
        assert meta["labels"]["app.kubernetes.io/component"] in ("trainer", "exporter")


@pytest.mark.parametrize("name", sorted(JOBS))
def test_pods_meet_the_restricted_pod_security_standard(name: str) -> None:
    for pod in pods(render(name)):
        sc = pod["spec"]["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["spec"]["restartPolicy"] == "Never"
        for c in containers(pod):
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"] == {"drop": ["ALL"]}
            assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
            keys = [e for e in c["env"] if e["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
            assert all("value" not in e and "secretKeyRef" in e["valueFrom"] for e in keys)


def test_the_2x4_gpu_job_runs_torchrun_with_c10d_rendezvous_on_index_0() -> None:
    children = render("job-2x4-gpu")
    (workers,) = [c for c in children if c["kind"] == "Job" and c["metadata"]["name"] == "sentiment-a1"]
    spec = workers["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimit"] == 0 and spec["podReplacementPolicy"] == "Failed" and spec["suspend"] is False
    assert workers["metadata"]["labels"]["finetune.dev/attempt"] == "1"
    pod = spec["template"]
    assert pod["metadata"]["labels"]["finetune.dev/attempt"] == "1"
    # An Indexed Job's pod i is named <job>-i under the subdomain: index 0 hosts the rendezvous.
    assert "hostname" not in pod["spec"] and pod["spec"]["subdomain"] == "sentiment-workers"
    (c,) = pod["spec"]["containers"]
    assert c["command"][:12] == [
        "python", "-m", "finetune_trainer.launch", "--nnodes=2",
        "--rdzv-endpoint=sentiment-a1-0.sentiment-workers:29400", f"--rdzv-id={UID}-1",
        "--join-timeout=900", "--read-timeout=300", "--", "--nproc-per-node=4", "--max-restarts=0", "-m",
    ]  # fmt: skip
    assert {"name": "FINETUNE_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in c["env"]
    index = next(e for e in c["env"] if e["name"] == "FINETUNE_NODE_INDEX")
    assert index["valueFrom"] == {"fieldRef": {"fieldPath": resources.INDEX_FIELD}}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert c["resources"]["requests"] == {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"}
    metrics = [(p["name"], p["containerPort"]) for p in c["ports"] if p["name"].startswith("metrics")]
    assert metrics == [("metrics", 9400), ("metrics-1", 9401), ("metrics-2", 9402), ("metrics-3", 9403)]
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["spec"]["tolerations"][0]["operator"] == "Exists"
    assert pod["spec"]["priorityClassName"] == "training"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    service = next(c for c in children if c["kind"] == "Service")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["metadata"]["name"] == "sentiment-workers"


def test_bad_input_and_disruptions_fail_the_attempt_at_once() -> None:
    """The pod failure policy: exit 2 from any container, or a DisruptionTarget condition, fails the Job without
    waiting for the other pods; the operator decides what a disruption costs (nothing)."""
    (workers, export) = [c for c in render("job-2x4-gpu") if c["kind"] == "Job"]
    for job_, names_ in ((workers, ["trainer"]), (export, ["export", "publish"])):
        rules = job_["spec"]["podFailurePolicy"]["rules"]
        assert [r["onExitCodes"] for r in rules if "onExitCodes" in r] == [
            {"containerName": n, "operator": "In", "values": [2]} for n in names_
        ]
        assert rules[-1] == {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
        assert all(r["action"] == "FailJob" for r in rules)


def test_a_queued_job_creates_its_jobs_suspended_with_kueues_labels() -> None:
    j = job("sentiment", JOBS["job-2x4-gpu"])
    kueue = {"kueue.x-k8s.io/queue-name": "team-a", "kueue.x-k8s.io/priority-class": "high", "team": "nlp"}
    group = resources.worker_group(j, UID, 3, SETTINGS, job_labels=kueue, deadline=120)
    (workers,) = [c for c in group if c["kind"] == "Job"]
    export = resources.export_job(j, UID, 1, SETTINGS, job_labels=kueue)
    for obj in (workers, export):
        assert obj["spec"]["suspend"] is True  # Kueue admits it by unsuspending it, the whole gang at once
        labels = obj["metadata"]["labels"]
        assert labels["kueue.x-k8s.io/queue-name"] == "team-a" and labels["kueue.x-k8s.io/priority-class"] == "high"
        assert "team" not in labels  # only Kueue's labels are passed on
        assert "kueue.x-k8s.io/queue-name" not in obj["spec"]["template"]["metadata"]["labels"]
    assert workers["spec"]["activeDeadlineSeconds"] == 120 and "activeDeadlineSeconds" not in export["spec"]
    # The export pod asks for what it uses: the job's cpu and memory, one GPU for a TensorRT build, not four.
    (step,) = export["spec"]["template"]["spec"]["initContainers"]
    assert step["resources"]["requests"] == {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "1"}
    (publish,) = export["spec"]["template"]["spec"]["containers"]
    assert "resources" not in publish or not publish["resources"]


def test_scheduler_and_runtime_class_reach_every_pod() -> None:
    spec = {**JOBS["job-1x1"], "template": {"schedulerName": "volcano", "runtimeClassName": "nvidia"},
            "serving": {"enabled": True, "repository": "s3://m", "tritonUrl": "http://t:8000"}}  # fmt: skip
    j = job("sentiment", spec)
    for template in pods([*resources.worker_group(j, UID, 1, SETTINGS), resources.export_job(j, UID, 1, SETTINGS)]):
        assert (template["spec"]["schedulerName"], template["spec"]["runtimeClassName"]) == ("volcano", "nvidia")


def test_s3_credentials_come_from_secret_references_only() -> None:
    pod = pods(render("job-1x1"))[0]
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "s3", "key": "accessKey"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "s3", "key": "secretKey"}}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]


def test_the_config_map_is_the_trainer_config_with_the_default_output() -> None:
    cm = render("job-cpu")[0]
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "sentiment-a1-config"
    cfg = TrainerConfig.model_validate_json(cm["data"]["trainer.json"])
    assert cfg.job_name == "sentiment" and cfg.namespace == "ml"
    assert cfg.job_uid == UID and cfg.output_uri == f"s3://ckpt/jobs/ml/sentiment/{UID}/model-output"
    assert cfg.checkpoint.storage == "s3://ckpt/jobs"
    pod = pods(render("job-cpu"))[0]
    assert pod["spec"]["containers"][0]["command"][-2:] == ["--config", "/etc/finetune/trainer.json"]
    assert pod["spec"]["volumes"][0] == {"name": "config", "configMap": {"name": "sentiment-a1-config"}}


def test_a_cpu_job_gets_no_gpus_and_shares_its_cores_between_processes() -> None:
    (pod,) = pods(render("job-cpu"))
    c = pod["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert {"name": "OMP_NUM_THREADS", "value": "2"} in c["env"]
    assert "--nproc-per-node=2" in c["command"] and "--rdzv-endpoint=localhost:0" in c["command"]


def test_export_pod_exports_then_publishes_with_the_repository_credentials() -> None:
    export_job = render("job-2x4-gpu")[-1]
    assert export_job["metadata"]["name"] == "sentiment-export-1" and export_job["spec"]["completions"] == 1
    pod = export_job["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "exporter"
    (export,) = pod["spec"]["initContainers"]
    (publish,) = pod["spec"]["containers"]
    # The exporter reads the trained model straight from the job's output on S3, with the storage credentials.
    assert export["command"][1:8] == ["-m", "finetune_trainer", "export", "--model",
                                      f"s3://ckpt/jobs/ml/sentiment/{UID}/model-output/model", "--out",
                                      "/workspace/export"]  # fmt: skip
    assert any("valueFrom" in e for e in export["env"])
    assert publish["command"][1:4] == ["-m", "finetune_trainer", "publish"]
    assert "s3://models/triton" in publish["command"] and "http://triton:8000" in publish["command"]
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in publish["env"] if "valueFrom" in e}
    assert secrets == {"models"}


def test_a_name_too_long_for_pod_hostnames_is_reported() -> None:
    """Room is kept for attempt numbers up to 9999: a job that restarts often keeps valid hostnames."""
    assert names.name_errors("a" * 56, 10) == [
        f"metadata.name: at most 55 characters for 10 worker pods (pod hostname {'a' * 56 + '-a9999-9'!r} is "
        "too long)"
    ]
    assert names.name_errors("a" * 55, 10) == []
    assert names.name_errors("a" * 55, 11) != []


def test_a_name_starting_with_a_digit_is_reported_before_its_service_is_refused() -> None:
    (error,) = names.name_errors("2024-bert", 1)
    assert error.startswith("metadata.name: must start with a lowercase letter") and "'2024-bert-workers'" in error
    assert names.name_errors("bert-2024", 1) == []


def test_a_tensorrt_job_exports_with_require_tensorrt_so_a_cpu_node_fails_at_once() -> None:
    from finetune_operator.steps import export_args

    spec = {"model": {"name": "bert-base-uncased"}, "dataset": {"train": "s3://d/train.csv"}}
    trt = job("trt", {**spec, "serving": {"backend": "tensorrt", "repository": "s3://models/triton"}})
    assert "--require-tensorrt" in export_args(trt, "m", "out")
    assert "--require-tensorrt" not in export_args(job("ort", spec), "m", "out")
