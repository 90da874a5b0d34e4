"""The operator as a user runs it: `helm install` of the chart (the operator in-cluster, as a pod of the operator
image under its ServiceAccount and namespaced Role, its validating webhook called by the API server through the
chart's Service with the chart's certificate), `kubectl apply` of a FineTuneJob whose model, data and
checkpoints live in S3, torchrun workers of the trainer image on the process-runtime nodes, `kubectl get ftj`
until Succeeded, then `kubectl delete` and `helm uninstall` leaving nothing behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import RELEASE, get_json, node_logs, s3_job, uploaded_job
from tests.cluster.test_finetunejob_api import columns
from tests.fixtures.kube import KubeApi, eventually
from tests.fixtures.kubelet import NodePool
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.slow
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

    job = uploaded_job("twonode", s3_server, tiny_bert, sentiment_csv)
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
