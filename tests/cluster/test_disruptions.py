"""Disruptions of a running FineTuneJob on the test cluster, with the operator in-cluster from its chart: a node
drained mid-run (a disruption, not a failure: `backoffLimit` untouched, no step lost beyond the last checkpoint);
rank 0 starting long after the other ranks (a slow image pull) with its DNS name resolving later still, with 2 and
4 nodes, training without a restart; a worker process stopped (SIGSTOP) flagged `Stalled` while the job stays
Running, and cleared when it continues."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import ATTEMPT, INDEX, get_json, status, step, uploaded_job, wait_status, warnings
from tests.cluster.processes import signal_all, worker_processes
from tests.cluster.test_finetunejob_api import columns
from tests.fixtures.kube import KubeApi, eventually
from tests.fixtures.kubelet import NodePool
from tests.fixtures.s3 import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.cluster_long]
OPERATOR = "app.kubernetes.io/name=finetune-operator,app.kubernetes.io/component=operator"
COMMITTED = re.compile(r"checkpoint \S+/checkpoint-(\d+) committed")
EVERY = 20  # checkpoint.everySteps of the drained job
RESUMED = re.compile(r"resumed from checkpoint at step (\d+)")


def finished(s: dict[str, Any]) -> bool:
    return s.get("phase") in ("Succeeded", "Failed")


def condition(s: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in s.get("conditions") or [] if c["type"] == kind), {})


def pods(kube: KubeApi, selector: str) -> list[dict[str, Any]]:
    return get_json(kube, "pods", "-l", selector)["items"]


def logs(kube: KubeApi, selector: str) -> str:
    return kube.kubectl("logs", "-l", selector, "--tail=-1", check=False).stdout


def sample_until(kube: KubeApi, name: str, done: Callable[[dict[str, Any]], bool], timeout: float, what: str,
                 nodes: NodePool | None) -> list[dict[str, Any]]:  # fmt: skip
    """Every status seen, once a second, until ``done`` holds (the last one); on timeout, what the cluster says."""
    seen: list[dict[str, Any]] = []

    def check(s: dict[str, Any]) -> bool:
        seen.append(s)
        return done(s)

    wait_status(kube, name, check, timeout, what, nodes)
    return seen


# --- 1. a node drained mid-run


@pytest.fixture
def uncordon(release: KubeApi) -> Iterator[list[str]]:
    """Nodes a test cordons or drains, uncordoned at the end whatever happens."""
    drained: list[str] = []
    yield drained
    for node in drained:
        release.kubectl("uncordon", node, check=False)


def test_a_node_drained_mid_run_is_a_disruption_that_loses_no_step_past_the_checkpoint(
    release: KubeApi, kube_nodes: NodePool | None, s3_server: S3Server, tiny_bert: Path,
    sentiment_csv: tuple[Path, Path], uncordon: list[str],
):  # fmt: skip
    kube = release
    schedulable = [n for n in get_json(kube, "nodes")["items"] if not n["spec"].get("unschedulable")]
    if len(schedulable) < 2:
        pytest.skip("draining a node needs another schedulable node for the new pods")
    job = uploaded_job("drained", s3_server, tiny_bert, sentiment_csv)
    job["spec"]["hyperparameters"].update(maxSteps=200, evalSteps=100)
    job["spec"]["checkpoint"]["everySteps"] = EVERY
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(job))

    # Past the first committed checkpoint: its step, as rank 0 logged the commit, is the floor after the drain.
    wait_status(kube, "drained", lambda s: s.get("phase") == "Running" and step(s) >= 25, 300,
                "training past the first checkpoint", kube_nodes)  # fmt: skip
    committed = eventually(lambda: [int(m) for m in COMMITTED.findall(logs(kube, f"{ATTEMPT}=1,{INDEX}=0"))],
                           timeout=60, interval=1, what="rank 0 logged a committed checkpoint")  # fmt: skip
    (worker,) = pods(kube, f"finetune.dev/job=drained,{ATTEMPT}=1,{INDEX}=1")
    node = worker["spec"]["nodeName"]
    before = status(kube, "drained")
    assert before["phase"] == "Running" and step(before) < 200, before
    # What the operator says of the newest checkpoint agrees with what rank 0 logged (or is newer).
    last_checkpoint = max(max(committed), int((before.get("lastCheckpoint") or {}).get("step") or 0))
    uncordon.append(node)
    started = time.monotonic()
    drain = kube.kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--force",
                         "--timeout=240s", timeout=300)  # fmt: skip
    drained_in = time.monotonic() - started
    assert "evicting pod" in drain.stdout + drain.stderr, drain.stdout + drain.stderr

    seen = sample_until(kube, "drained", finished, 900, "the job finished after the drain", kube_nodes)
    final = seen[-1]
    assert final["phase"] == "Succeeded", final
    # A drain evicts through the eviction API: a disruption, replaced at once without spending backoffLimit.
    assert final["restarts"] == 0 and final["disruptions"] >= 1 and final["attempt"] >= 2, final
    (interruption,) = final["interruptions"]  # one restart, the drain's, with where it resumed and what it redid
    assert interruption["reason"] == "Disrupted" and interruption["attempt"] == 1, interruption
    assert interruption["checkpointStep"] >= last_checkpoint, (interruption, last_checkpoint)
    assert 0 <= interruption["stepsRedone"] <= EVERY, interruption  # nothing lost beyond the checkpoint interval
    after = [step(s) for s in seen if int(s.get("attempt") or 1) >= 2 and s.get("progress")]
    assert after and min(after) >= last_checkpoint, (last_checkpoint, after)
    resumed = [int(m) for m in RESUMED.findall(logs(kube, f"finetune.dev/job=drained,{ATTEMPT}=2,{INDEX}=0"))]
    assert resumed and resumed[0] >= last_checkpoint, (resumed, last_checkpoint)
    # Nothing of the new attempt went to the drained node, and the reason of the restart says why.
    placed = {p["spec"].get("nodeName") for p in pods(kube, f"finetune.dev/job=drained,{ATTEMPT}=2")}
    assert node not in placed, (node, placed)
    assert "Disrupted" in warnings(kube, "drained"), warnings(kube, "drained")
    print(f"drain of {node} took {drained_in:.1f}s; checkpoint {last_checkpoint}, resumed at {resumed[0]}, "
          f"steps after the restart {min(after)}..{max(after)}")  # fmt: skip


# --- 2. late rank 0, late DNS


@pytest.mark.parametrize("nodes", [2, 4])
def test_rank_0_starting_late_with_its_dns_name_resolving_later_trains_without_a_restart(
    nodes: int, release: KubeApi, kube_nodes: NodePool | None, s3_server: S3Server, tiny_bert: Path,
    sentiment_csv: tuple[Path, Path],
):  # fmt: skip
    if kube_nodes is None:
        pytest.skip("the test kubelet delays the image pull and the DNS records")
    kube = release
    name = f"late{nodes}"
    job = uploaded_job(name, s3_server, tiny_bert, sentiment_csv)
    job["spec"]["hyperparameters"].update(maxSteps=20, evalSteps=10, batchSize=4)
    job["spec"]["resources"]["nodes"] = nodes
    rank0 = {"finetune.dev/job": name, INDEX: "0"}
    # The other ranks start at once; rank 0's containers start 80 s after its sandbox, past torchrun's 60 s
    # default read timeout, and its name resolves for the others 100 s after it has its IP.
    with kube_nodes.delays.pull(rank0, 80), kube_nodes.delays.dns(rank0, 100):
        kube.kubectl("apply", "-f", "-", stdin=json.dumps(job))
        eventually(lambda: len([p for p in pods(kube, f"finetune.dev/job={name}")
                                if p["status"].get("phase") == "Running"]) >= nodes - 1,
                   timeout=180, interval=1, what=f"the {nodes - 1} other ranks running")  # fmt: skip
        (first,) = pods(kube, f"finetune.dev/job={name},{INDEX}=0")
        waiting = ((first["status"].get("containerStatuses") or [{}])[0].get("state") or {}).get("waiting") or {}
        assert waiting.get("reason") == "ContainerCreating", first["status"]
        final = wait_status(kube, name, finished, 600, "the job finished", kube_nodes)
    assert final["phase"] == "Succeeded", final
    assert final["restarts"] == 0 and final.get("disruptions", 0) == 0 and final["attempt"] == 1, final
    group = pods(kube, f"finetune.dev/job={name}")
    assert len(group) == nodes and {p["metadata"]["labels"][ATTEMPT] for p in group} == {"1"}, group
    started = {p["metadata"]["labels"][INDEX]: started_at(p) for p in group}
    late = max(started[i] - started["0"] for i in started if i != "0")
    assert late <= -70, started  # rank 0's trainer started well after every other rank's launcher
    reasons = [e["reason"] for e in get_json(kube, "events", "--field-selector",
                                             f"involvedObject.name={first['metadata']['name']}")["items"]]  # fmt: skip
    assert "Pulling" in reasons and "Pulled" in reasons, reasons
    for index in range(1, nodes):  # each other rank's launcher waited for rank 0's name and port, and said so
        said = logs(kube, f"finetune.dev/job={name},{INDEX}={index}")
        up = re.search(r"rendezvous host \S+ is up after (\d+) s", said)
        assert up and int(up.group(1)) >= 60, said[-3000:]


def started_at(pod: dict[str, Any]) -> float:
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return datetime.fromisoformat(state["startedAt"].replace("Z", "+00:00")).timestamp()


# --- 3. a stalled worker


def test_a_stopped_worker_is_flagged_stalled_while_running_and_cleared_when_it_continues(
    release: KubeApi, kube_nodes: NodePool | None, s3_server: S3Server, tiny_bert: Path,
    sentiment_csv: tuple[Path, Path],
):  # fmt: skip
    if kube_nodes is None:
        pytest.skip("stops a worker process of this machine's test kubelet")
    kube = release
    job = uploaded_job("stall", s3_server, tiny_bert, sentiment_csv)
    job["spec"]["hyperparameters"].update(maxSteps=120, evalSteps=60)
    job["spec"]["progressDeadlineSeconds"] = 30
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(job))
    running = wait_status(kube, "stall", lambda s: s.get("phase") == "Running" and step(s) >= 6, 300,
                          "training", kube_nodes)  # fmt: skip
    assert condition(running, "Stalled").get("status") != "True", running
    (pod,) = pods(kube, f"finetune.dev/job=stall,{ATTEMPT}=1,{INDEX}=1")
    stopped = worker_processes(pod)
    assert stopped, f"no trainer process under {pod['status']['containerStatuses'][0]['containerID']}"
    try:
        signal_all(stopped, signal.SIGSTOP)
        at = time.monotonic()
        stalled = wait_status(kube, "stall", lambda s: condition(s, "Stalled").get("status") == "True", 120,
                              "the Stalled condition", kube_nodes)  # fmt: skip
        flagged = time.monotonic() - at
        cond = condition(stalled, "Stalled")
        assert cond["reason"] == "NoProgress" and "progressDeadlineSeconds 30" in cond["message"], cond
        assert flagged >= 25, flagged  # not before the deadline (less the progress file's last write)
        assert stalled["phase"] == "Running", stalled  # a stall is seen, not acted on
        row = columns(*kube.kubectl("get", "ftj", "stall").stdout.splitlines())
        assert row["PHASE"] == "Running", row
        eventually(lambda: "Stalled" in warnings(kube, "stall"), timeout=30, interval=1, what="a Stalled Warning")
        at_stall = step(stalled)
    finally:
        signal_all(stopped, signal.SIGCONT)
    cleared = wait_status(kube, "stall", lambda s: condition(s, "Stalled").get("status") == "False", 120,
                          "the Stalled condition cleared", kube_nodes)  # fmt: skip
    assert condition(cleared, "Stalled")["reason"] == "Progressing" and step(cleared) > at_stall, cleared
    final = wait_status(kube, "stall", finished, 600, "the job finished", kube_nodes)
    assert final["phase"] == "Succeeded", final
    assert final["restarts"] == 0 and final["attempt"] == 1 and final.get("disruptions", 0) == 0, final
    print(f"Stalled after {flagged:.1f}s at step {at_stall}")
