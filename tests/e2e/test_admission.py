"""The validating webhook as the API server calls it: an AdmissionReview POSTed to the operator's webhook server
(kopf's, started when FINETUNE_WEBHOOK_PORT is set; plain HTTP here because no certificate is configured)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from finetune_operator import api
from tests.e2e.conftest import Operator, free_port
from tests.fixtures.kube import eventually

SPEC = {
    "model": {"name": "bert-base-uncased"},
    "dataset": {"train": "s3://d/t.csv"},
    "checkpoint": {"storage": "s3://c"},
}


@pytest.fixture
def webhook_port(operator_env: dict[str, str]) -> int:
    port = free_port()
    operator_env.update(FINETUNE_WEBHOOK_PORT=str(port), FINETUNE_WEBHOOK_ADDRESS="127.0.0.1")
    return port


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


def test_the_webhook_names_every_wrong_field_and_refuses_immutable_changes(webhook_port: int, operator: Operator):
    ok = eventually(lambda: review(webhook_port, "CREATE", SPEC), timeout=30, what="webhook answering")
    assert ok["allowed"] is True

    bad = {**SPEC, "hyperparameters": {"learningRate": 2}, "resources": {"nodes": 0}}
    denied = review(webhook_port, "CREATE", bad)
    assert denied["allowed"] is False and denied["status"]["code"] == 422
    message = denied["status"]["message"]
    assert "spec.hyperparameters.learningRate: expected a number less than 1.0, got 2" in message
    assert "spec.resources.nodes: expected a number of at least 1, got 0" in message

    running = {"metadata": {"name": "sentiment"}, "spec": SPEC, "status": {"phase": "Running"}}
    changed = review(webhook_port, "UPDATE", {**SPEC, "model": {"name": "roberta-base"}}, old=running)
    assert changed["allowed"] is False
    assert changed["status"]["message"].startswith("spec.model: cannot change while the job is Running")
    assert review(webhook_port, "UPDATE", {**SPEC, "suspend": True}, old=running)["allowed"] is True
