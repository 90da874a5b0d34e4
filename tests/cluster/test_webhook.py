"""The validating webhook as the API server calls it: an AdmissionReview POSTed to the operator's webhook server
(kopf's, started when FINETUNE_WEBHOOK_PORT is set; plain HTTP here, the chart's Service and certificate are
test_helm_operator's). It judges what the CRD's schema and CEL rules cannot, names every wrong field, and refuses
changes to a started job's inputs."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_operator import api
from tests.cluster.operator_process import Operator
from tests.fixtures.kube import KubeApi, eventually
from tests.fixtures.processes import free_port

SPEC = {
    "model": {"name": "bert-base-uncased"},
    "dataset": {"train": "s3://d/t.csv"},
    "checkpoint": {"storage": "s3://c"},
}


@pytest.fixture
def webhook(ftj_api: KubeApi, tmp_path: Path) -> Iterator[int]:
    """The operator with its webhook server on a free loopback port; yields the port."""
    port = free_port()
    env = {"FINETUNE_METRICS_PORT": str(free_port()), "FINETUNE_METRICS_ADDRESS": "127.0.0.1",
           "FINETUNE_WEBHOOK_PORT": str(port), "FINETUNE_WEBHOOK_ADDRESS": "127.0.0.1"}  # fmt: skip
    op = Operator(ftj_api, tmp_path, env).start()
    try:
        yield port
    finally:
        op.stop()


def review(port: int, operation: str, spec: dict, old: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "sentiment", "namespace": "ml"},
           "spec": spec}  # fmt: skip
    request = {
        "uid": "0f0e", "operation": operation, "object": obj, "oldObject": old, "dryRun": False, "userInfo": {},
        "kind": {"group": api.GROUP, "version": api.VERSION, "kind": api.KIND},
        "resource": {"group": api.GROUP, "version": api.VERSION, "resource": api.PLURAL},
        "namespace": "ml", "name": "sentiment",
    }  # fmt: skip
    body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/validate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["response"]


def test_the_webhook_names_every_wrong_field_and_refuses_immutable_changes(webhook: int):
    ok = eventually(lambda: review(webhook, "CREATE", SPEC), timeout=30, what="webhook answering")
    assert ok["allowed"] is True

    bad = {**SPEC, "hyperparameters": {"learningRate": 2}, "resources": {"nodes": 0}}
    denied = review(webhook, "CREATE", bad)
    assert denied["allowed"] is False and denied["status"]["code"] == 422
    message = denied["status"]["message"]
    assert "spec.hyperparameters.learningRate: expected a number less than 1.0, got 2" in message
    assert "spec.resources.nodes: expected a number of at least 1, got 0" in message

    running = {"metadata": {"name": "sentiment"}, "spec": SPEC, "status": {"phase": "Running"}}
    changed = review(webhook, "UPDATE", {**SPEC, "model": {"name": "roberta-base"}}, old=running)
    assert changed["allowed"] is False
    assert changed["status"]["message"].startswith("spec.model: cannot change while the job is Running")
    assert review(webhook, "UPDATE", {**SPEC, "suspend": True}, old=running)["allowed"] is True
