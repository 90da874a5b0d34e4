"""The operator against the real API server, Job controller and scheduler: what admission refuses the Job
controller (its FailedCreate warnings), and why pods wait, reach the job as a user sees it with kubectl (phase,
reason, message, a Warning event); a temporary refusal clears once it is lifted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.conftest import get_json, job, status, warnings
from tests.cluster.operator_process import Operator
from tests.cluster.test_finetunejob_api import columns
from tests.fixtures.kube import KubeApi, eventually

pytestmark = pytest.mark.slow


def test_a_quota_refusal_is_shown_then_clears_when_the_quota_is_raised(ftj_api: KubeApi, operator: Operator,
                                                                     tmp_path: Path):  # fmt: skip
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods"}, "spec": {"hard": {"pods": "0"}}}
    ftj_api.kubectl("apply", "-f", "-", stdin=json.dumps(quota))
    ftj_api.kubectl("apply", "-f", "-", stdin=json.dumps(job("quota", tmp_path / "ckpt")))
    got = eventually(lambda: (s := status(ftj_api, "quota")).get("reason") == "QuotaExceeded" and s, timeout=60,
                     interval=0.5, what="reason QuotaExceeded")  # fmt: skip
    assert got["phase"] == "Pending"
    assert got["message"].startswith("job quota-a1 cannot create its pods: "), got
    assert "exceeded quota: pods" in got["message"], got
    training = next(c for c in got["conditions"] if c["type"] == "Training")
    assert training["reason"] == "QuotaExceeded"
    assert eventually(lambda: "QuotaExceeded" in warnings(ftj_api, "quota"), timeout=30, what="Warning event")
    row = columns(*ftj_api.kubectl("get", "ftj", "quota").stdout.splitlines())
    assert (row["PHASE"], row["REASON"]) == ("Pending", "QuotaExceeded")
    assert get_json(ftj_api, "pods")["items"] == []

    ftj_api.kubectl("patch", "resourcequota", "pods", "--type=merge", "-p", '{"spec":{"hard":{"pods":"10"}}}')
    # Created once the quota allows it (the Job controller retries with its backoff); this cluster has no Node the
    # pods fit, so the scheduler's word follows.
    got = eventually(lambda: (s := status(ftj_api, "quota")).get("reason") == "Unschedulable" and s, timeout=180,
                     interval=0.5, what="the group created, then reported unschedulable")  # fmt: skip
    # "no nodes available to schedule pods", or "0/N nodes are available: ..." when another test's Node exists
    assert got["phase"] == "Pending" and got["message"].startswith("pod quota-a1-"), got
    assert "available" in got["message"], got
    pods = sorted(p["metadata"]["name"] for p in get_json(ftj_api, "pods")["items"])
    assert len(pods) == 2 and pods[0].startswith("quota-a1-0-") and pods[1].startswith("quota-a1-1-"), pods
    assert got.get("restarts") == 0
    assert "Unschedulable" in warnings(ftj_api, "quota")


def test_a_limit_range_refusal_names_the_limit(ftj_api: KubeApi, operator: Operator, tmp_path: Path):
    """A namespace whose LimitRange allows less CPU per container than the job asks for."""
    limits = {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "small"},
              "spec": {"limits": [{"type": "Container", "max": {"cpu": "500m"}}]}}  # fmt: skip
    ftj_api.kubectl("apply", "-f", "-", stdin=json.dumps(limits))
    ftj_api.kubectl("apply", "-f", "-", stdin=json.dumps(job("limits", tmp_path / "ckpt")))
    got = eventually(lambda: (s := status(ftj_api, "limits")).get("reason") == "Forbidden" and s,
                     timeout=60, interval=0.5, what="reason Forbidden")  # fmt: skip
    assert got["phase"] == "Pending" and "maximum cpu usage per Container is 500m" in got["message"], got
    assert eventually(lambda: "Forbidden" in warnings(ftj_api, "limits"), timeout=30, what="Warning event")
