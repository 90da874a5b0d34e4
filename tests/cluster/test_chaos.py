"""Chaos on the test cluster: several FineTuneJobs through the chart's operator, Triton and the real control plane
while faults are injected at random through the real parts (tests/cluster/chaos.py; seeded: FINETUNE_CHAOS_SEED
replays the schedule, FINETUNE_CHAOS_FAULTS sets the count). It asserts invariants, never timings:

- every planned fault was injected, the worker kills mid-training, after a committed checkpoint;
- every job ends Succeeded or Failed, and a Failed job's reason and message name an injected fault;
- no job ever has two live worker pods or two live export pods at once (sampled twice a second);
- at least one resume from a committed checkpoint per worker kill, every resume from a checkpoint an earlier
  attempt committed (never from a planted half-written one), and every committed checkpoint matches its manifest;
- every version a model config serves is complete, every version folder was claimed, a published version is
  never rewritten, one job publishes one version, and each Succeeded job's version is ready in Triton;
- at the end no pod runs, every pod is owned by a live job, and deleting the jobs leaves no child behind.

    FINETUNE_TEST_CLUSTER=all pytest tests/cluster/test_chaos.py -s   # prints the seed, the faults and the figures
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.chaos import (
    FAULTS,
    RESUMED,
    Injector,
    PodSampler,
    TornCheckpoints,
    chaos_seed,
    claim_keys,
    download,
    repository_problems,
    resume_problems,
    schedule,
    served_versions,
    version_digest,
)
from tests.cluster.conftest import get_json, helm_release, s3_job, triton_values, upload
from tests.cluster.test_serving import served, triton_url
from tests.fixtures.cluster import ControlPlane
from tests.fixtures.kube import KubeApi, eventually
from tests.fixtures.kubelet import NodePool
from tests.fixtures.s3 import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.cluster_long, pytest.mark.timeout(1800)]

JOBS, SERVED = 4, 2  # of which the first SERVED export and publish into the chart's Triton
EVERY = 50  # checkpoint.everySteps
KILLS = 3  # worker kills in every schedule, each one a resume from a checkpoint
FINISH_WITHIN = 1200.0  # liveness bound: every job terminal by then (seconds from the first create)
# What a Failed job's message must mention, per fault that can legitimately exhaust a job's retries.
CAUSES = {
    "kill_worker": r"signal|exit code (137|-9)|[Kk]illed",
    "restart_s3": r"S3|s3://|storage|[Ee]ndpoint|connect",
    "delete_triton": r"Triton|not served|not live|not ready|unknown model|connect",
}


def failure_cause(status: dict[str, Any], injected: Counter) -> str | None:
    """The injected fault a Failed job's reason and message name, or None."""
    text = f"{status.get('reason')}: {status.get('message') or ''}"
    return next((k for k, pattern in CAUSES.items() if injected[k] and re.search(pattern, text)), None)


def statuses(kube: KubeApi) -> dict[str, dict[str, Any]] | None:
    """Every job's status, or None while the API server does not answer (it may have been killed)."""
    try:
        listed = json.loads(kube.kubectl("get", "ftj", "-o", "json", timeout=20).stdout)["items"]
    except (subprocess.SubprocessError, AssertionError, RuntimeError, ValueError):
        return None
    return {j["metadata"]["name"]: {**(j.get("status") or {}), "uid": j["metadata"]["uid"]} for j in listed}


def rank0_logs(nodes: NodePool, namespace: str, job: str) -> dict[int, str]:
    """Attempt -> what rank 0's containers logged (the nodes keep the logs of deleted pods)."""
    pattern = re.compile(rf"^{re.escape(namespace)}_{re.escape(job)}-a(\d+)-0-")
    logs: dict[int, str] = {}
    for path in sorted(nodes.work.rglob("logs/*/*/*.log")):
        if m := pattern.match(path.parent.parent.name):
            logs[int(m.group(1))] = logs.get(int(m.group(1)), "") + path.read_text(errors="replace")
    return logs


def test_jobs_survive_random_faults_of_the_real_parts(
    cluster_api: KubeApi, kube_plane: ControlPlane | None, kube_nodes: NodePool | None, s3_server: S3Server,
    helm_bin: str, tiny_bert: Path, sentiment_csv: tuple[Path, Path], tmp_path: Path,
) -> None:  # fmt: skip
    if kube_plane is None or kube_nodes is None:
        pytest.skip("injects faults into this session's control plane and nodes")
    seed = chaos_seed()
    rng = random.Random(seed)
    plan = schedule(rng, int(os.environ.get("FINETUNE_CHAOS_FAULTS") or 9), KILLS)
    planned = Counter(plan)
    print(f"\nchaos seed {seed} (rerun with FINETUNE_CHAOS_SEED={seed}); planned faults: {plan}")
    values = [*triton_values(s3_server),
              "--set", "extraEnv[1].name=FINETUNE_PUBLISH_TIMEOUT_SECONDS", "--set-string", "extraEnv[1].value=120",
              "--set", "extraEnv[2].name=FINETUNE_BACKOFF_MAX_SECONDS",
              "--set-string", "extraEnv[2].value=4"]  # fmt: skip
    with helm_release(cluster_api, kube_nodes, s3_server, helm_bin, *values) as kube:
        train, val = sentiment_csv
        model = upload(s3_server, tiny_bert, "models/tiny")
        data = upload(s3_server, train, "data/train.csv"), upload(s3_server, val, "data/val.csv")
        names, models = [f"chaos-{i}" for i in range(JOBS)], {}
        for i, name in enumerate(names):
            job = s3_job(name, s3_server, model, *data)
            steps = rng.choice([1500, 2000])
            job["spec"]["hyperparameters"].update(maxSteps=steps, evalSteps=steps, batchSize=16)
            job["spec"]["resources"] = {"nodes": 1, "processesPerNode": 1, "cpu": "1", "memory": "2Gi"}
            job["spec"]["checkpoint"]["everySteps"] = EVERY
            job["spec"]["backoffLimit"] = 4
            if i < SERVED:
                models[name] = f"m{i}"
                job["spec"]["serving"] = {
                    "enabled": True, "repository": s3_server.url("models"), "modelName": models[name],
                    "maxBatchSize": 8, "backend": "python", "s3": job["spec"]["checkpoint"]["s3"],
                    "tritonUrl": f"http://ft-finetune-operator-triton.{kube.namespace}.svc:8000",
                }  # fmt: skip
            kube.kubectl("apply", "-f", "-", stdin=json.dumps(job))

        torn = TornCheckpoints(s3_server.client(), s3_server.bucket)
        injector = Injector(rng, kube, kube_plane, s3_server, torn, EVERY)
        sampler = PodSampler(kube).start()
        started = time.monotonic()
        next_fault = started + rng.uniform(20.0, 30.0)
        digests: dict[str, str | None] = {}  # served job -> its published version's files when it succeeded
        seen: dict[str, dict[str, Any]] = {}
        try:
            while True:
                if (now := statuses(kube)) is not None:
                    seen = now
                for n, s in seen.items():
                    if s.get("storage") and n not in torn.bases:
                        torn.bases[n] = s["storage"].removeprefix(f"s3://{s3_server.bucket}/")
                    if s.get("phase") == "Succeeded" and n in models and n not in digests:
                        copy = download(s3_server, "models", tmp_path / f"at-success-{n}")
                        digests[n] = version_digest(copy, models[n], s["model"]["version"])
                if len(seen) == JOBS and all(s.get("phase") in ("Succeeded", "Failed") for s in seen.values()):
                    break
                if time.monotonic() - started > FINISH_WITHIN:
                    phases = {n: (s.get("phase"), s.get("reason"), s.get("message")) for n, s in seen.items()}
                    pytest.fail(f"jobs not finished after {FINISH_WITHIN:.0f}s (seed {seed}): {phases}\n"
                                f"faults: {injector.log}")  # fmt: skip
                if plan and time.monotonic() >= next_fault:
                    kind = plan.pop(0)
                    if injector.inject(kind):
                        next_fault = time.monotonic() + rng.uniform(6.0, 12.0)
                    else:
                        plan.append(kind)  # nothing to hit right now (no worker past a checkpoint): later
                        next_fault = time.monotonic() + 2.0
                time.sleep(1.0)
        finally:
            sampler.stop()
        elapsed = time.monotonic() - started
        where = f"(seed {seed}; faults: {injector.log})"
        assert not plan, f"the jobs finished before these planned faults could be injected: {plan} {where}"
        assert Counter({k: injector.counts[k] for k in FAULTS}) == planned, (injector.counts, planned)

        # Outcomes: Succeeded, or Failed for a reason that names an injected fault.
        outcomes = Counter(s["phase"] + (f"/{s.get('reason')}" if s["phase"] == "Failed" else "")
                           for s in seen.values())  # fmt: skip
        for n, s in seen.items():
            if s["phase"] == "Failed":
                assert failure_cause(s, injector.counts), f"{n} failed for no injected fault: {s} {where}"
        assert outcomes["Succeeded"] >= JOBS - 1, f"{outcomes} {where}"

        # No duplicated workers or exporters at any sampled moment; nothing left running, nothing orphaned.
        assert sampler.samples > 0 and not sampler.violations, f"{sampler.violations[:5]} {where}"
        uids = {s["uid"] for s in seen.values()}
        for pod in get_json(kube, "pods", "-l", "finetune.dev/job")["items"]:
            owners = {o["uid"] for o in pod["metadata"].get("ownerReferences") or []}
            name = pod["metadata"]["name"]
            assert owners & uids or owners & _job_uids(kube), f"pod {name} is owned by no job {where}"
            assert pod["status"].get("phase") not in ("Pending", "Running"), f"pod {name} still running {where}"

        # Checkpoints: resumes only from committed ones, never from a planted half-written one; one per kill.
        resumes, resumed_by_job = 0, {}
        for n in names:
            logs = rank0_logs(kube_nodes, kube.namespace, n)
            problems, count = resume_problems(n, logs, torn.planted[n])
            resumes += count
            resumed_by_job[n] = {a: RESUMED.findall(text) for a, text in logs.items()}
            excerpts = {a: [ln for ln in text.splitlines() if "checkpoint" in ln][-6:] for a, text in logs.items()}
            assert not problems, f"{problems} {where}; checkpoint lines by attempt: {excerpts}"
            assert not torn.committed_objects_match(n), f"{torn.committed_objects_match(n)} {where}"
        assert resumes >= injector.counts["kill_worker"], (
            f"{resumes} resumes for {injector.counts}; steps resumed from, by job and attempt: {resumed_by_job} {where}"
        )

        # Model versions: complete when served, claimed when written, never rewritten, ready in Triton.
        repository = download(s3_server, "models", tmp_path / "repository")
        versions = 0
        for n, name in models.items():
            if not (repository / name).is_dir():
                continue
            assert not repository_problems(repository, name), f"{repository_problems(repository, name)} {where}"
            versions += len(served_versions(repository, name))
            s = seen[n]
            if s["phase"] != "Succeeded":
                continue
            version = s["model"]["version"]
            assert served_versions(repository, name) == [version], f"{n}: one job, one version {where}"
            assert claim_keys(repository, name).get(version) == s["uid"], f"{n}: version {version} not its own"
            assert digests[n] is not None and version_digest(repository, name, version) == digests[n], (
                f"{n}: version {version} of {name} was incomplete or rewritten after it was published {where}"
            )
            eventually(lambda m=name, v=version: _ready(kube, m, v), timeout=180, interval=2,
                       what=f"{name} version {version} ready in Triton")  # fmt: skip

        # Deleting the jobs deletes every child (the garbage collector, through ownerReferences).
        kube.kubectl("delete", "ftj", "--all", "--wait=true", timeout=180)
        eventually(lambda: not get_json(kube, "jobs,pods,configmaps,services", "-l", "finetune.dev/job")["items"],
                   timeout=180, interval=2, what="the jobs' children gone")  # fmt: skip

    figures = {
        "seed": seed, "jobs": JOBS, "served_jobs": SERVED,
        "faults": {k: injector.counts[k] for k in FAULTS}, "faults_total": sum(injector.counts[k] for k in FAULTS),
        "outcomes": dict(outcomes), "restarts": sum(int(s.get("restarts") or 0) for s in seen.values()),
        "disruptions": sum(int(s.get("disruptions") or 0) for s in seen.values()),
        "resumes_from_checkpoint": resumes, "torn_checkpoints_planted": sum(len(v) for v in torn.planted.values()),
        "model_versions_served": versions, "pod_samples": sampler.samples, "seconds": round(elapsed, 1),
    }  # fmt: skip
    print("chaos figures:", json.dumps(figures))
    print("\n".join(injector.log))


def _job_uids(kube: KubeApi) -> set[str]:
    """The uids of the batch Jobs (a worker pod's owner is its Job, the Job's owner the FineTuneJob)."""
    return {j["metadata"]["uid"] for j in get_json(kube, "jobs", "-l", "finetune.dev/job")["items"]}


def _ready(kube: KubeApi, model: str, version: int) -> bool:
    try:
        return served(triton_url(kube), version, model)
    except Exception:  # Triton restarting after its pod was deleted, or not scheduled yet
        return False
