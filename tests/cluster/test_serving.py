"""From `kubectl apply` to a served model on the test cluster: the chart installs the operator and a Triton over an
S3 model repository; a two-node job trains, its export pod exports ONNX and publishes version 1 into the
repository, the operator has Triton load it and checks it is ready; the job ends Succeeded with status.model, and
Triton's text-in pipeline (the tokenizer the job trained with, then the classifier) labels new texts. A second
job publishing under the same name adds version 2 beside version 1, which stays as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import RELEASE, get_json, helm_release, triton_values, uploaded_job, wait_status
from tests.cluster.test_finetunejob_api import columns
from tests.fixtures.kube import KubeApi
from tests.fixtures.kubelet import NodePool
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.slow

TRITON = f"{RELEASE}-finetune-operator-triton"
MODEL = "sentiment"


@pytest.fixture
def serving_release(cluster_api: KubeApi, kube_nodes: NodePool | None, s3_server: S3Server, helm_bin: str):
    """The chart with its Triton (triton.enabled) over s3://<bucket>/models, read with the Secret's keys."""
    with helm_release(cluster_api, kube_nodes, s3_server, helm_bin, *triton_values(s3_server)) as kube:
        yield kube


def serving_job(name: str, kube: KubeApi, s3: S3Server, model: Path, csv: tuple[Path, Path]) -> dict[str, Any]:
    job = uploaded_job(name, s3, model, csv)
    job["spec"]["hyperparameters"].update(maxSteps=60, batchSize=16, evalSteps=30)
    job["spec"]["serving"] = {
        "enabled": True, "repository": s3.url("models"), "modelName": MODEL, "maxBatchSize": 8,
        # The chart's Triton by its Service name, as the examples give it; python backend: the bundled server has
        # no onnxruntime backend, so the classifier runs the same model.onnx through onnxruntime in Python.
        "tritonUrl": f"http://{TRITON}.{kube.namespace}.svc:8000", "backend": "python",
        "s3": job["spec"]["checkpoint"]["s3"],
    }  # fmt: skip
    return job


def triton_url(kube: KubeApi) -> str:
    """Triton's pod IP: the test reaches the pod network through the nodes' bridge (no kube-proxy here)."""
    pods = get_json(kube, "pods", "-l", "app.kubernetes.io/component=triton")["items"]
    ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                    for c in p["status"].get("conditions") or [])]  # fmt: skip
    assert ready, pods
    return f"{ready[0]['status']['podIP']}:8000"


def version_objects(s3: S3Server, version: int) -> dict[str, str]:
    """Every object of one published version with its ETag."""
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"models/{MODEL}/{version}/")
    return {o["Key"]: o["ETag"] for o in listed.get("Contents") or []}


def served(url: str, version: int, model: str = MODEL) -> bool:
    """Whether Triton reports that version of the model ready."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        return client.is_model_ready(model, str(version))
    finally:
        client.close()


def labels(url: str, texts: list[str]) -> list[str]:
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        batch = np.array([[t] for t in texts], dtype=object)
        text = httpclient.InferInput("TEXT", list(batch.shape), "BYTES")
        text.set_data_from_numpy(batch)
        result = client.infer(f"{MODEL}_text", [text])
        return [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy("LABEL").ravel()]
    finally:
        client.close()


def test_a_job_applied_with_kubectl_ends_as_a_model_triton_serves(
    serving_release: KubeApi, s3_server: S3Server, kube_nodes: NodePool | None, tiny_bert: Path,
    sentiment_csv: tuple[Path, Path],
):  # fmt: skip
    kube = serving_release
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(serving_job("served", kube, s3_server, tiny_bert, sentiment_csv)))
    final = wait_status(kube, "served", lambda s: s.get("phase") in ("Succeeded", "Failed"), 600,
                        "trained, exported and published", kube_nodes)  # fmt: skip
    assert final["phase"] == "Succeeded", final
    model = final["model"]
    assert (model["name"], model["version"], model["ready"]) == (MODEL, 1, True), model
    done = {c["type"]: c for c in final["conditions"]}
    assert done["Succeeded"]["status"] == "True" and done["Publishing"]["status"] == "False", done
    row = columns(*kube.kubectl("get", "ftj", "served").stdout.splitlines())
    assert (row["PHASE"], row["MODEL"]) == ("Succeeded", MODEL), row
    reasons = [e["reason"] for e in get_json(kube, "events", "--field-selector", "involvedObject.name=served")["items"]]
    assert {"Exporting", "Publishing", "ModelReady"} <= set(reasons), reasons

    # What is served is in the repository the chart's Triton reads, and answers with the job's labels.
    url = triton_url(kube)
    assert served(url, 1)
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket,
                                                                 Prefix="models/")["Contents"]}  # fmt: skip
    assert f"models/{MODEL}/1/model.onnx" in keys and f"models/{MODEL}/config.pbtxt" in keys, sorted(keys)
    first = version_objects(s3_server, 1)
    texts = ["a wonderful and brilliant film", "an awful and boring film", "the acting was superb",
             "the plot was dreadful"]  # fmt: skip
    try:
        assert labels(url, texts) == ["positive", "negative", "positive", "negative"]
    except Exception:
        print(kube.kubectl("logs", "-l", "app.kubernetes.io/component=triton", "--tail=-1", check=False).stdout[-8000:])
        raise

    # A second job under the same model name publishes version 2; version 1 is left as it was.
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(serving_job("again", kube, s3_server, tiny_bert, sentiment_csv)))
    second = wait_status(kube, "again", lambda s: s.get("phase") in ("Succeeded", "Failed"), 600,
                         "the second job published", kube_nodes)  # fmt: skip
    assert second["phase"] == "Succeeded" and second["model"]["version"] == 2, second
    assert version_objects(s3_server, 1) == first
    assert served(url, 2)
