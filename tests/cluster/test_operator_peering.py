"""Two operator replicas with peering, as `replicaCount: 2` and `peering.enabled` run them: the chart's peering
CRDs installed, each replica creating the peering object if missing; one replica handles the jobs while the
other pauses, and the other takes over when the active one dies."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import ROOT, get_json, job, status
from tests.cluster.operator_process import Operator
from tests.fixtures.kube import KubeApi, eventually
from tests.fixtures.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.cluster_long]
LIFETIME = 10  # seconds a dead replica's heartbeat still counts (FINETUNE_PEERING_LIFETIME)


@pytest.fixture
def peering_crds(ftj_api: KubeApi, helm_bin: str) -> None:
    """The chart's peering CRDs, applied as `helm install --set peering.enabled=true` would."""
    rendered = subprocess.run(
        [helm_bin, "template", "ft", str(ROOT / "charts" / "finetune-operator"), "--set", "peering.enabled=true",
         "--set", "replicaCount=2", "--show-only", "templates/peering-crds.yaml"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    ftj_api.kubectl("apply", "--server-side", "-f", "-", stdin=rendered)
    for crd in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        eventually(lambda crd=crd: any(c["type"] == "Established" and c["status"] == "True"
                                       for c in get_json(ftj_api, "crd", crd).get("status", {}).get("conditions", [])),
                   timeout=60, interval=0.2, what=f"{crd} established")  # fmt: skip


@pytest.fixture
def replicas(ftj_api: KubeApi, peering_crds: None, tmp_path: Path) -> Iterator[list[Operator]]:
    started = []
    try:
        for priority in (200, 100):
            env = {"FINETUNE_METRICS_PORT": str(free_port()), "FINETUNE_METRICS_ADDRESS": "127.0.0.1",
                   "FINETUNE_POLL_SECONDS": "1", "FINETUNE_PEERING": "finetune-operator",
                   "FINETUNE_PEERING_PRIORITY": str(priority), "FINETUNE_PEERING_LIFETIME": str(LIFETIME)}  # fmt: skip
            started.append(Operator(ftj_api, tmp_path / f"p{priority}", env))
            started[-1].log_dir.mkdir()
            started[-1].start()
        yield started
    finally:
        for op in started:
            op.stop()


def worker_jobs(kube: KubeApi, name: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in get_json(kube, "jobs", "-l", f"finetune.dev/job={name}")["items"])


def test_one_replica_is_active_and_the_other_takes_over_when_it_dies(ftj_api: KubeApi, replicas: list[Operator],
                                                                     tmp_path: Path):  # fmt: skip
    active, standby = replicas
    peering = get_json(ftj_api, "kopfpeering", "finetune-operator")  # created by the replicas themselves
    eventually(lambda: len(get_json(ftj_api, "kopfpeering", "finetune-operator").get("status") or {}) == 2,
               timeout=30, interval=0.5, what=f"both replicas in the peering object {peering}")  # fmt: skip
    eventually(lambda: "Pausing the watch-stream for finetunejobs" in standby.log.read_text(), timeout=30,
               interval=0.5, what="the lower-priority replica pausing")  # fmt: skip

    ftj_api.kubectl("apply", "-f", "-", stdin=json.dumps(job("first", tmp_path / "ckpt")))
    eventually(lambda: worker_jobs(ftj_api, "first") == ["first-a1"], timeout=60, interval=0.5,
               what="the first job's worker Job, from the active replica")  # fmt: skip
    assert status(ftj_api, "first")["phase"] == "Pending"
    assert "first" not in standby.log.read_text()  # paused: it never touched the job

    active.kill()  # SIGKILL: no goodbye in the peering object; its heartbeat runs out after LIFETIME
    ftj_api.kubectl("apply", "-f", "-", stdin=json.dumps(job("second", tmp_path / "ckpt")))
    eventually(lambda: worker_jobs(ftj_api, "second") == ["second-a1"], timeout=LIFETIME + 60,
               interval=0.5, what="the second job's worker Job, from the replica that took over")  # fmt: skip
    assert "Resuming operations after the pause" in standby.log.read_text()
    assert worker_jobs(ftj_api, "first") == ["first-a1"]  # no duplicates after the takeover
