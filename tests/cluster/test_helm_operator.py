"""The operator as a user runs it: `helm install` of the chart (the operator in-cluster, as a pod of the operator
image under its ServiceAccount and namespaced Role, its validating webhook called by the API server through the
chart's Service with the chart's certificate), `kubectl apply` of a FineTuneJob whose model, data and
checkpoints live in S3, torchrun workers of the trainer image on the process-runtime nodes, `kubectl get ftj`
until Succeeded, then `kubectl delete` and `helm uninstall` leaving nothing behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import ROOT, get_json
from tests.cluster.test_finetunejob_api import columns
from tests.fixtures.kube import KubeApi, eventually
from tests.fixtures.kubelet import NodePool
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.slow
CHART = ROOT / "charts" / "finetune-operator"
RELEASE = "ft"
SECRET = "s3-credentials"


@pytest.fixture
def release(cluster_api: KubeApi, kube_nodes: NodePool | None, s3_server: S3Server, helm_bin: str):
    """`helm install` into the test's namespace, with S3 credentials in a Secret; `helm uninstall` after."""
    if kube_nodes is not None:
        kube_nodes.expose(int(s3_server.endpoint.rsplit(":", 1)[1]))
    kube = cluster_api
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET},
              "stringData": {"accessKey": s3_server.access_key, "secretKey": s3_server.secret_key}}  # fmt: skip
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(secret))
    helm = [helm_bin, "--kubeconfig", str(kube.kubeconfig), "--namespace", kube.namespace]
    values = ["--set", f"storage.s3.endpoint={s3_server.endpoint}", "--set", f"storage.s3.credentialsSecret={SECRET}",
              "--set", "extraEnv[0].name=FINETUNE_POLL_SECONDS", "--set-string", "extraEnv[0].value=1"]  # fmt: skip
    installed = subprocess.run([*helm, "install", RELEASE, str(CHART), "--wait", "--timeout", "180s", *values],
                               capture_output=True, text=True, timeout=240)  # fmt: skip
    if installed.returncode != 0:
        pods = kube.kubectl("get", "pods", "-o", "yaml", check=False).stdout[-6000:]
        raise AssertionError(f"helm install failed: {installed.stderr}\n{pods}\n{node_logs(kube_nodes)}")
    try:
        yield kube
    finally:
        result = subprocess.run([*helm, "uninstall", RELEASE, "--wait", "--timeout", "120s"], capture_output=True,
                                text=True, timeout=180)  # fmt: skip
        assert result.returncode == 0, result.stderr


def node_logs(nodes: NodePool | None, chars: int = 3000) -> str:
    """The tail of every container log the test nodes kept (what `kubectl logs` would show)."""
    if nodes is None:
        return ""
    logs = sorted(nodes.work.rglob("logs/*/*/*.log"))
    return "\n".join(f"--- {p.relative_to(nodes.work)}\n{p.read_text(errors='replace')[-chars:]}" for p in logs)


def upload(s3: S3Server, local: Path, prefix: str) -> str:
    client = s3.client()
    for path in local.rglob("*") if local.is_dir() else [local]:
        if path.is_file():
            key = f"{prefix}/{path.relative_to(local)}" if local.is_dir() else prefix
            client.upload_file(str(path), s3.bucket, key)
    return s3.url(prefix)


def s3_job(name: str, s3: S3Server, model: str, train: str, validation: str) -> dict[str, Any]:
    s3_access = {"endpoint": s3.endpoint, "credentialsSecret": SECRET, "addressingStyle": "path"}
    return {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {
            "model": {"name": model},
            "dataset": {"train": train, "validation": validation},
            "hyperparameters": {"maxSteps": 30, "batchSize": 8, "learningRate": 3e-3, "evalSteps": 10,
                                "warmupRatio": 0.0, "logEverySteps": 2, "maxSeqLength": 32},
            "resources": {"nodes": 2, "processesPerNode": 1, "cpu": "1", "memory": "2Gi"},
            "checkpoint": {"storage": s3.url("checkpoints"), "everySteps": 10, "s3": s3_access},
        },
    }  # fmt: skip


def test_helm_installed_operator_runs_a_two_node_job_to_succeeded(
    release: KubeApi, s3_server: S3Server, kube_nodes: NodePool | None, tiny_bert: Path,
    sentiment_csv: tuple[Path, Path],
):
    kube = release
    pods = get_json(kube, "pods", "-l", "app.kubernetes.io/name=finetune-operator")["items"]
    assert pods and pods[0]["spec"]["serviceAccountName"] == f"{RELEASE}-finetune-operator", pods
    # The chart's validating webhook judges what the CRD's schema and CEL rules cannot: here, where checkpoints go.
    unstored = {**s3_job("unstored", s3_server, "bert-base-uncased", "s3://x/train.csv", "s3://x/val.csv")}
    del unstored["spec"]["checkpoint"]["storage"]
    refused = kube.kubectl("apply", "-f", "-", stdin=json.dumps(unstored), check=False)
    assert refused.returncode != 0
    assert 'admission webhook "validate.finetunejobs.finetune.dev" denied the request' in refused.stderr
    assert "checkpoint.storage" in refused.stderr, refused.stderr
    assert kube.kubectl("get", "ftj", "unstored", check=False).returncode != 0

    train, val = sentiment_csv
    job = s3_job("twonode", s3_server, upload(s3_server, tiny_bert, "models/tiny"),
                 upload(s3_server, train, "data/train.csv"), upload(s3_server, val, "data/val.csv"))  # fmt: skip
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(job))

    def finished() -> dict[str, Any] | None:
        status = get_json(kube, "ftj", "twonode").get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    try:
        status = eventually(finished, timeout=420, interval=1, what="the job finished")
    except AssertionError:
        print(kube.kubectl("get", "pods,ftj,events", "-o", "wide", check=False).stdout)
        print(node_logs(kube_nodes))
        raise
    assert status["phase"] == "Succeeded", status
    row = columns(*kube.kubectl("get", "ftj", "twonode").stdout.splitlines())
    assert row["PHASE"] == "Succeeded"
    assert status.get("restarts", 0) == 0
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket,
                                                                   Prefix="checkpoints/")["Contents"]]  # fmt: skip
    assert any("step-" in k or "checkpoint" in k for k in keys), keys[:20]

    kube.kubectl("delete", "ftj", "twonode", "--wait=true", timeout=120)
    eventually(lambda: not get_json(kube, "pods", "-l", "finetune.dev/job=twonode")["items"], timeout=60,
               interval=0.5, what="the garbage collector removed the job's pods")  # fmt: skip
