"""A job is its uid, not its name: deleted and created again under the same name, it starts afresh and never
adopts the old job's pods that are still terminating."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import get_json, job, status
from tests.cluster.operator_process import Operator
from tests.fixtures.kube import KubeApi, eventually

pytestmark = pytest.mark.slow
HOLD = "finetune.dev/test-hold"  # keeps a deleted pod terminating, as a kubelet does during the grace period


def pods(kube: KubeApi) -> list[dict]:
    return get_json(kube, "pods")["items"]


def test_a_job_created_again_ignores_the_old_jobs_terminating_pods(ftj_api: KubeApi, operator: Operator,
                                                                   tmp_path: Path):  # fmt: skip
    manifest = json.dumps(job("again", tmp_path / "ckpt"))
    ftj_api.kubectl("apply", "-f", "-", stdin=manifest)
    old_uid = get_json(ftj_api, "ftj", "again")["metadata"]["uid"]
    eventually(lambda: len(pods(ftj_api)) == 2, timeout=60, interval=0.5, what="the first job's pods")
    old_pods = [p["metadata"]["name"] for p in pods(ftj_api)]
    for name in old_pods:
        ftj_api.kubectl("patch", "pod", name, "--type=merge", "-p", json.dumps({"metadata": {"finalizers": [HOLD]}}))
    try:
        ftj_api.kubectl("delete", "ftj", "again", "--wait=true", "--timeout=60s")
        assert all(p["metadata"].get("deletionTimestamp") for p in pods(ftj_api))  # terminating, not gone
        ftj_api.kubectl("apply", "-f", "-", stdin=manifest)
        new_uid = get_json(ftj_api, "ftj", "again")["metadata"]["uid"]
        assert new_uid != old_uid
        got = eventually(lambda: (s := status(ftj_api, "again")).get("phase") and s, timeout=60, interval=0.5,
                         what="the new job's first status")  # fmt: skip
        assert got["phase"] == "Pending" and got["attempt"] == 1 and got["restarts"] == 0, got
        assert new_uid in got["storage"] and old_uid not in got["storage"]
        # The old pods' deletion (seen as a worker failure by a name-keyed operator) must not restart the new job.
        for _ in range(5):  # several reconciles (the operator polls every second)
            current = status(ftj_api, "again")
            assert current["restarts"] == 0 and current["phase"] == "Pending", current
            time.sleep(1)
    finally:
        for name in old_pods:
            ftj_api.kubectl("patch", "pod", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)

    def owned_by_new() -> bool:
        jobs = {j["metadata"]["uid"]: j["metadata"]["ownerReferences"][0]["uid"]
                for j in get_json(ftj_api, "jobs")["items"]}  # fmt: skip
        owners = [jobs.get(p["metadata"]["ownerReferences"][0]["uid"]) for p in pods(ftj_api)]
        return len(owners) == 2 and set(owners) == {new_uid}

    eventually(owned_by_new, timeout=90, interval=0.5, what="the new job's own pods, once the old ones are gone")
    assert status(ftj_api, "again")["restarts"] == 0
