"""The real Kueue on the test cluster, checked as a user checks it with kubectl: a plain batch/v1 Indexed Job
labelled with a queue name waits suspended, with Kueue's reason on its Workload and no pod, until its whole gang
fits the ClusterQueue's quota; a higher-priority Job preempts a running one, which is suspended, loses its pods and
is admitted again when the other finishes; a Job whose controller is a FineTuneJob is queued all the same."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.cluster.conftest import get_json, job
from tests.fixtures.kube import KubeApi, eventually
from tests.fixtures.kubelet import NodePool
from tests.fixtures.kueue import (
    PRIORITY_LABEL,
    QUEUE_LABEL,
    Kueue,
    apply,
    delete_queues,
    priority_classes,
    queues,
    set_quota,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster_long]
IMAGE = "ghcr.io/finetune-operator/trainer:test"


@pytest.fixture
def kube(cluster_api: KubeApi, kube_nodes: NodePool | None, kueue: Kueue) -> KubeApi:
    print("kueue: " + ", ".join(f"{step} {seconds:.1f}s" for step, seconds in kueue.timings.items()))
    return cluster_api


@pytest.fixture
def queue(kube: KubeApi) -> Any:
    """A ClusterQueue and LocalQueue of the test's own (named after its namespace), removed at the end."""
    made: list[str] = []

    def make(cpu: str, memory: str = "4Gi") -> dict[str, Any]:
        made.append(kube.namespace)
        return queues(kube, kube.namespace, cpu, memory)

    yield make
    for name in made:
        delete_queues(kube, name)


def indexed_job(name: str, queue: str, seconds: float, priority: str | None = None) -> dict[str, Any]:
    """Two pods of one cpu each (an Indexed Job, parallelism 2) that sleep ``seconds``."""
    labels = {QUEUE_LABEL: queue, **({PRIORITY_LABEL: priority} if priority else {})}
    container = {"name": "main", "image": IMAGE, "command": ["python", "-c", f"import time; time.sleep({seconds})"],
                 "resources": {"requests": {"cpu": "1", "memory": "256Mi"}}}  # fmt: skip
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
            "spec": {"completionMode": "Indexed", "completions": 2, "parallelism": 2,
                     "template": {"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                                           "containers": [container]}}}}  # fmt: skip


def workload(kube: KubeApi, job_name: str) -> dict[str, Any] | None:
    """The Workload Kueue made for Job ``job_name`` (its controller owner)."""
    for item in get_json(kube, "workloads.kueue.x-k8s.io")["items"]:
        owners = item["metadata"].get("ownerReferences") or []
        if any(o["kind"] == "Job" and o["name"] == job_name and o.get("controller") for o in owners):
            return item
    return None


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions", []) if c["type"] == kind), {})


def has(kube: KubeApi, job_name: str, kind: str, status: str = "True") -> dict[str, Any] | None:
    """The Workload of ``job_name`` once its ``kind`` condition has ``status``."""
    wl = workload(kube, job_name)
    return wl if condition(wl, kind).get("status") == status else None


def pods(kube: KubeApi, job_name: str) -> list[dict[str, Any]]:
    return get_json(kube, "pods", "-l", f"batch.kubernetes.io/job-name={job_name}")["items"]


def phases(kube: KubeApi, job_name: str) -> list[str]:
    live = [p for p in pods(kube, job_name) if not p["metadata"].get("deletionTimestamp")]
    return sorted(p["status"].get("phase", "") for p in live)


def suspended(kube: KubeApi, job_name: str) -> bool:
    return get_json(kube, "job", job_name)["spec"].get("suspend") is True


def test_an_indexed_job_waits_suspended_until_its_whole_gang_fits_then_runs(kube: KubeApi, queue: Any):
    cluster_queue = queue(cpu="1")
    apply(kube, indexed_job("gang", kube.namespace, seconds=2))

    pending = eventually(lambda: has(kube, "gang", "QuotaReserved", "False"), timeout=60, interval=0.3,
                         what="the Workload pending on quota")  # fmt: skip
    reserved = condition(pending, "QuotaReserved")
    flavor = f"{kube.namespace}-flavor"
    assert reserved["reason"] == "Pending"
    assert reserved["message"] == (
        f"couldn't assign flavors to pod set main: insufficient quota for cpu in flavor {flavor}, previously "
        "considered podsets requests (0) + current podset request (2) > maximum capacity (1)"
    )
    assert pending["spec"]["podSets"][0]["count"] == 2
    assert suspended(kube, "gang")
    eventually(lambda: get_json(kube, "localqueue", kube.namespace).get("status", {}).get("pendingWorkloads") == 1,
               timeout=30, interval=0.3, what="the LocalQueue counts one pending workload")  # fmt: skip
    time.sleep(3)  # the Job controller would have made its pods by now, were the Job not suspended
    assert pods(kube, "gang") == [] and suspended(kube, "gang")

    raised = time.monotonic()
    set_quota(kube, cluster_queue, "2")
    admitted = eventually(lambda: has(kube, "gang", "Admitted"), timeout=60, interval=0.1, what="admitted")
    admit_latency = time.monotonic() - raised
    assignment = admitted["status"]["admission"]["podSetAssignments"][0]
    assert assignment["count"] == 2 and assignment["flavors"] == {"cpu": flavor, "memory": flavor}
    assert assignment["resourceUsage"]["cpu"] == "2"
    assert not suspended(kube, "gang")

    eventually(lambda: phases(kube, "gang") == ["Succeeded", "Succeeded"], timeout=120, interval=0.5,
               what="both pods Succeeded")  # fmt: skip
    got = pods(kube, "gang")
    assert {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in got} == {"0", "1"}
    assert {p["spec"]["nodeName"] for p in got} <= {"node-a", "node-b"}
    eventually(lambda: has(kube, "gang", "Finished"), timeout=60, interval=0.3, what="Workload Finished")
    finished = condition(workload(kube, "gang"), "Finished")
    assert finished["reason"] == "Succeeded", finished
    ready = condition(workload(kube, "gang"), "PodsReady")  # waitForPodsReady: the whole gang came up
    assert (ready["status"], ready["message"]) == ("True", "All pods reached readiness and the workload is running")
    print(f"kueue: admitted {admit_latency:.2f}s after the quota was raised")


def test_a_higher_priority_job_preempts_a_running_one_which_is_readmitted_after(kube: KubeApi, queue: Any):
    queue(cpu="2")
    priority_classes(kube, **{f"{kube.namespace}-low": 100, f"{kube.namespace}-high": 1000})
    apply(kube, indexed_job("low", kube.namespace, seconds=600, priority=f"{kube.namespace}-low"))
    eventually(lambda: phases(kube, "low") == ["Running", "Running"], timeout=90, interval=0.3,
               what="the low-priority pods Running")  # fmt: skip
    first_pods = {p["metadata"]["uid"] for p in pods(kube, "low")}
    assert workload(kube, "low")["spec"]["priority"] == 100

    created = time.monotonic()
    apply(kube, indexed_job("high", kube.namespace, seconds=3, priority=f"{kube.namespace}-high"))
    evicted = eventually(lambda: has(kube, "low", "Evicted"), timeout=60, interval=0.1, what="low evicted")
    preempted_at = time.monotonic() - created
    eviction = condition(evicted, "Evicted")
    assert eviction["reason"] == "Preempted"
    assert eviction["message"].startswith("Preempted to accommodate a workload (UID: ")
    assert ") due to prioritization in the ClusterQueue; preemptor path: /" in eviction["message"]
    assert condition(evicted, "Preempted")["reason"] == "InClusterQueue"
    eventually(lambda: suspended(kube, "low"), timeout=30, interval=0.2, what="low Job suspended")
    eventually(lambda: phases(kube, "low") == [], timeout=60, interval=0.2, what="low's pods deleted")

    eventually(lambda: has(kube, "high", "Admitted"), timeout=60, interval=0.1, what="high admitted")
    admitted_at = time.monotonic() - created
    eventually(lambda: get_json(kube, "job", "high").get("status", {}).get("succeeded") == 2, timeout=120,
               interval=0.5, what="high's two pods Succeeded")  # fmt: skip
    low_job = get_json(kube, "job", "low")
    print(f"kueue: low evicted {preempted_at:.2f}s and high admitted {admitted_at:.2f}s after high was created; "
          f"low Job after eviction: status {json.dumps(low_job.get('status'))}")  # fmt: skip

    readmitted = eventually(lambda: has(kube, "low", "Admitted"), timeout=90, interval=0.3, what="low readmitted")
    assert condition(readmitted, "QuotaReserved")["status"] == "True"
    assert not suspended(kube, "low")
    eventually(lambda: phases(kube, "low") == ["Running", "Running"], timeout=90, interval=0.3,
               what="the low-priority pods Running again")  # fmt: skip
    assert first_pods.isdisjoint(p["metadata"]["uid"] for p in pods(kube, "low"))
    assert get_json(kube, "job", "low")["status"].get("failed", 0) == 0  # evicted pods count as no failure


def test_a_job_controlled_by_a_finetunejob_is_queued_like_any_job(kube: KubeApi, queue: Any, finetunejob_crd: str,
                                                                  tmp_path):  # fmt: skip
    queue(cpu="1")
    apply(kube, job("owner", tmp_path))
    owner = get_json(kube, "ftj", "owner")
    child = indexed_job("owned", kube.namespace, seconds=1)
    child["spec"].update(completions=1, parallelism=1)
    child["metadata"]["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                             "name": "owner", "uid": owner["metadata"]["uid"],
                                             "controller": True, "blockOwnerDeletion": True}]  # fmt: skip
    created = json.loads(kube.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(child)).stdout)
    assert created["spec"]["suspend"] is True  # as stored: Kueue's webhook suspended it (admission follows at once)
    eventually(lambda: has(kube, "owned", "Finished"), timeout=120, interval=0.3, what="owned Job's Workload Finished")
    assert get_json(kube, "job", "owned")["status"]["succeeded"] == 1
