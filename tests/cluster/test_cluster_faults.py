"""Faults of the real parts, mid-job, with the operator in-cluster from its chart: a worker pod deleted (an
eviction), etcd and the API server crashed and restarted, the operator's pod deleted. The job still ends
Succeeded, resumes from a committed checkpoint exactly once (the deletion), and leaves no stray pods."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import ATTEMPT, INDEX, get_json, resumed_at, status, step, uploaded_job, wait_status
from tests.fixtures.cluster import ControlPlane
from tests.fixtures.kube import KubeApi, eventually
from tests.fixtures.kubelet import NodePool
from tests.fixtures.s3 import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.cluster_long]
OPERATOR = "app.kubernetes.io/name=finetune-operator,app.kubernetes.io/component=operator"


def test_a_job_survives_an_eviction_control_plane_crashes_and_losing_its_operator_pod(
    release: KubeApi, kube_plane: ControlPlane | None, kube_nodes: NodePool | None, s3_server: S3Server,
    tiny_bert: Path, sentiment_csv: tuple[Path, Path],
):  # fmt: skip
    if kube_plane is None:
        pytest.skip("kills the control plane this session started")
    kube = release
    job = uploaded_job("faults", s3_server, tiny_bert, sentiment_csv)
    job["spec"]["hyperparameters"].update(maxSteps=240, evalSteps=80)
    job["spec"]["checkpoint"]["everySteps"] = 20
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(job))
    faults = []

    # 1. A worker pod deleted after a checkpoint is committed: the group restarts from it.
    before = wait_status(kube, "faults", lambda s: s.get("phase") == "Running" and step(s) >= 30, 300,
                         "training past the first checkpoint", kube_nodes)  # fmt: skip
    kube.kubectl("delete", "pod", "-l", f"{ATTEMPT}=1,{INDEX}=1", "--wait=false")
    faults.append(("worker pod deleted", step(before)))
    restarted = wait_status(kube, "faults", lambda s: s.get("attempt") == 2, 120, "attempt 2", kube_nodes)
    assert restarted["restarts"] == 1, restarted
    resumed = resumed_at(kube, 2)
    # From a committed checkpoint, not from scratch: the first at step 20, or the one written on SIGTERM.
    assert resumed >= 20, resumed

    # 2. etcd and the API server crash together, and come back with etcd's data.
    running = wait_status(kube, "faults", lambda s: s.get("phase") == "Running" and step(s) > resumed + 5, 240,
                          "attempt 2 training", kube_nodes)  # fmt: skip
    kube_plane.kill("kube-apiserver")
    kube_plane.kill("etcd")
    time.sleep(3)
    kube_plane.restart("etcd")
    kube_plane.restart("kube-apiserver")
    faults.append(("etcd and kube-apiserver killed and restarted", step(running)))

    # 3. The operator's pod deleted: its Deployment makes another, which takes the job over.
    old = [p["metadata"]["name"] for p in get_json(kube, "pods", "-l", OPERATOR)["items"]]
    assert status(kube, "faults").get("phase") in ("Running", "Restarting")
    kube.kubectl("delete", "pod", *old, "--wait=false")
    faults.append(("operator pod deleted", step(status(kube, "faults"))))

    final = wait_status(kube, "faults", lambda s: s.get("phase") in ("Succeeded", "Failed"), 900, "the job finished",
                        kube_nodes)  # fmt: skip
    assert final["phase"] == "Succeeded", final
    assert final["restarts"] == 1 and final["attempt"] == 2, final  # only the eviction cost a restart
    assert [name for name, _ in faults] == ["worker pod deleted", "etcd and kube-apiserver killed and restarted",
                                            "operator pod deleted"]  # fmt: skip
    assert all(at < 240 for _, at in faults), faults  # each fault landed mid-training
    operators = get_json(kube, "pods", "-l", OPERATOR)["items"]
    assert len(operators) == 1 and operators[0]["metadata"]["name"] not in old
    pods = get_json(kube, "pods", "-l", "finetune.dev/job=faults")["items"]
    attempts = sorted(p["metadata"]["labels"][ATTEMPT] for p in pods if not p["metadata"].get("deletionTimestamp"))
    assert attempts.count("2") <= 2 and set(attempts) <= {"1", "2"}, attempts  # nothing doubled
    assert all(p["status"]["phase"] in ("Succeeded", "Failed") for p in pods), [p["status"]["phase"] for p in pods]


def test_a_job_survives_losing_a_node_mid_training(
    release: KubeApi, kube_plane: ControlPlane | None, kube_nodes: NodePool | None, s3_server: S3Server,
    tiny_bert: Path, sentiment_csv: tuple[Path, Path],
):  # fmt: skip
    """A node stops (its Lease goes stale, its processes die): the node lifecycle controller marks it NotReady and
    evicts its pods, the group restarts on the nodes left from the latest checkpoint, and deleting the lost Node
    lets the pod GC remove the pods that could never finish terminating."""
    if kube_plane is None or kube_nodes is None:
        pytest.skip("loses a node of this session's cluster")
    kube = release
    spare = kube_nodes.add("node-c")
    kube.kubectl("cordon", "node-b")  # the workers go to node-a and node-c
    try:
        job = uploaded_job("lost", s3_server, tiny_bert, sentiment_csv)
        job["spec"]["hyperparameters"].update(maxSteps=200, evalSteps=100)
        job["spec"]["checkpoint"]["everySteps"] = 20
        kube.kubectl("apply", "-f", "-", stdin=json.dumps(job))
        before = wait_status(kube, "lost", lambda s: s.get("phase") == "Running" and step(s) >= 30, 300,
                             "training past the first checkpoint", kube_nodes)  # fmt: skip
        placed = {p["spec"].get("nodeName") for p in get_json(kube, "pods", "-l", "finetune.dev/job=lost")["items"]}
        assert "node-c" in placed, placed
        kube.kubectl("uncordon", "node-b")
        spare.lose()

        final = wait_status(kube, "lost", lambda s: s.get("phase") in ("Succeeded", "Failed"), 900,
                            "the job finished after the node was lost", kube_nodes)  # fmt: skip
        assert final["phase"] == "Succeeded", final
        # A lost node is a disruption: the group restarts from its checkpoint without spending backoffLimit.
        assert final["restarts"] == 0 and 1 <= final["disruptions"] <= 2, final
        assert step(final) >= step(before)
        node = get_json(kube, "node", "node-c")
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "Unknown", ready  # what the node lifecycle controller says of a silent node
    finally:
        kube.kubectl("uncordon", "node-b", check=False)
    # The lost node's pods stay Terminating (no kubelet confirms them) until the Node object is deleted.
    kube.kubectl("delete", "node", "node-c")
    eventually(lambda: all(p["spec"].get("nodeName") != "node-c"
                           for p in get_json(kube, "pods", "-l", "finetune.dev/job=lost")["items"]),
               timeout=180, interval=2, what="the pod GC removed the lost node's pods")  # fmt: skip
