"""Chaos: many small FineTuneJobs through the real operator, API stand-in, node agent, S3 server and Triton while
faults are injected at random (seeded: FINETUNE_CHAOS_SEED replays the schedule; FINETUNE_CHAOS_FAULTS bounds
the count). It asserts invariants, never timings:

- every job ends Succeeded or Failed, and a Failed job's reason and message name an injected fault;
- no job ever has two live worker pods or two live export pods at once (sampled several times a second);
- at the end no pod runs, every pod is owned by a live job, and deleting the jobs leaves no child behind;
- every resume starts from a checkpoint an earlier attempt committed, never from a planted half-written one,
  and every committed checkpoint matches its manifest;
- every version a model config serves is complete, every version folder was claimed, a published version
  is never rewritten, and each Succeeded job's version is ready in Triton after all restarts;
- one job, one version: a retried export confirms the version its job published (claimed under the job's
  uid) instead of adding another, and status.model.version is that version.

    pytest tests/e2e/test_chaos.py -s     # prints the seed and the figures (jobs, faults by kind, outcomes)
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.chaos import (
    FAULTS,
    Injector,
    PodSampler,
    RestartableTriton,
    TornCheckpoints,
    chaos_seed,
    claim_keys,
    repository_problems,
    resume_problems,
    schedule,
    served_versions,
    version_digest,
)
from tests.e2e.conftest import Jobs, real_cluster
from tests.fixtures.kube import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480), pytest.mark.usefixtures("job_controller")]

JOBS = 6
SERVED = 2  # of which export and publish into the Triton repository
FINISH_WITHIN = 300.0  # liveness bound: every job terminal by then (seconds from the first create)
SECRET = "chaos-s3"
# What a Failed job's message must mention, per fault that can legitimately exhaust a job's retries.
CAUSES = {
    "kill_worker": r"stopped by a signal|exit code (137|-9)|was deleted|disappeared",
    "kill_operator": r"was deleted|disappeared",
    "restart_s3": r"S3|s3://|storage|[Ee]ndpoint|connect",
    "restart_triton": r"Triton|not served|not live|not ready|unknown model",
}


@pytest.fixture
def chaos_parts(kube_api, jobs: Jobs, operator_env: dict[str, str], s3_server, triton_install, tmp_path: Path):
    """S3 credentials in a Secret for the pods, the operator's own S3 access, a restartable Triton."""
    if real_cluster():
        pytest.skip("chaos injects faults through the stand-in's hooks and local servers")
    jobs.core.create_namespaced_secret(
        kube_api.namespace,
        {"metadata": {"name": SECRET}, "stringData": {"accessKey": s3_server.access_key,
                                                      "secretKey": s3_server.secret_key}},
    )  # fmt: skip
    operator_env.update(s3_server.env())
    operator_env.update({"FINETUNE_PUBLISH_TIMEOUT_SECONDS": "60", "FINETUNE_BACKOFF_MAX_SECONDS": "4"})
    repository = tmp_path / "model-repository"
    repository.mkdir()
    triton = RestartableTriton(triton_install, repository, tmp_path / "tritonserver.log")
    triton.start()
    try:
        yield triton, repository
    finally:
        triton.stop()


def job_body(job_manifest, name: str, steps: int, s3_server, serving: dict | None) -> dict[str, Any]:
    s3 = {"endpoint": s3_server.endpoint, "region": "us-east-1", "credentialsSecret": SECRET}
    body = job_manifest(name, max_steps=steps, every=4, serving=serving, backoffLimit=4,
                        resources={"nodes": 1, "processesPerNode": 1, "cpu": "1", "memory": "1Gi"})  # fmt: skip
    body["spec"]["checkpoint"] = {"storage": s3_server.url("checkpoints"), "everySteps": 4, "s3": s3}
    return body


def failure_cause(status: dict[str, Any], injected: Counter) -> str | None:
    """The injected fault a Failed job's reason and message name, or None."""
    if status.get("reason") not in ("BackoffLimitExceeded", "PublishFailed"):
        return None
    text = status.get("message") or ""
    return next((k for k, pattern in CAUSES.items() if injected[k] and re.search(pattern, text)), None)


def trainer_logs(jobs: Jobs, name: str) -> dict[int, str]:
    logs = {}
    for pod in jobs.pods(name):
        attempt = int(pod.metadata.labels["finetune.dev/attempt"])
        logs[attempt] = jobs.log(pod.metadata.name)
    return logs


def test_jobs_survive_random_faults(request, chaos_parts, jobs: Jobs, job_manifest, s3_server, node_agent,
                                    kube_api, tmp_path: Path) -> None:  # fmt: skip
    triton, repository = chaos_parts
    operator = request.getfixturevalue("operator")
    seed = chaos_seed()
    rng = random.Random(seed)
    budget = int(os.environ.get("FINETUNE_CHAOS_FAULTS") or 12)
    plan = schedule(rng, budget)
    print(f"\nchaos seed {seed} (rerun with FINETUNE_CHAOS_SEED={seed}); planned faults: {plan}")

    torn = TornCheckpoints(s3_server.client(), s3_server.bucket, "checkpoints", kube_api.namespace)
    injector = Injector(rng, kube_api, jobs, node_agent, operator, s3_server, triton, torn)
    names, models = [], {}
    for i in range(JOBS):
        name = f"chaos-{i}"
        serving = None
        if i < SERVED:
            models[name] = f"m{i}"
            serving = {"enabled": True, "repository": str(repository), "tritonUrl": f"http://{triton.http_url}",
                       "backend": "python", "modelName": models[name], "maxBatchSize": 8}  # fmt: skip
        jobs.create(job_body(job_manifest, name, rng.choice([16, 24]), s3_server, serving))
        names.append(name)

    sampler = PodSampler(client.CoreV1Api(kube_api.client()), kube_api.namespace).start()
    started = time.monotonic()
    next_fault = started + rng.uniform(6.0, 10.0)  # let the first workers start
    digests: dict[str, str | None] = {}  # job -> its published version's files when it succeeded
    statuses: dict[str, dict[str, Any]] = {}
    try:
        while True:
            statuses = {n: jobs.status(n) for n in names}
            for n, s in statuses.items():
                if s.get("phase") == "Succeeded" and n in models and n not in digests:
                    digests[n] = version_digest(repository, models[n], s["model"]["version"])
            if all(s.get("phase") in ("Succeeded", "Failed") for s in statuses.values()):
                break
            if time.monotonic() - started > FINISH_WITHIN:
                phases = {n: (s.get("phase"), s.get("reason"), s.get("message")) for n, s in statuses.items()}
                pytest.fail(f"jobs not finished after {FINISH_WITHIN:.0f}s (seed {seed}): {phases}\n"
                            f"faults: {injector.log}\n{operator.logs()[-4000:]}")  # fmt: skip
            if plan and time.monotonic() >= next_fault:
                kind = plan.pop(0)
                if not injector.inject(kind):
                    plan.append(kind)  # nothing to hit right now (e.g. no running pod): later
                next_fault = time.monotonic() + rng.uniform(2.0, 5.0)
            time.sleep(0.5)
    finally:
        sampler.stop()
    elapsed = time.monotonic() - started
    where = f"(seed {seed}; faults: {injector.log})"

    # Outcomes: Succeeded, or Failed for a reason that names an injected fault.
    outcomes = Counter(f"{s['phase']}" + (f"/{s.get('reason')}" if s["phase"] == "Failed" else "")
                       for s in statuses.values())  # fmt: skip
    for n, s in statuses.items():
        if s["phase"] == "Failed":
            assert failure_cause(s, injector.counts), f"{n} failed for no injected fault: {s.get('reason')}: " \
                                                      f"{s.get('message')} {where}"  # fmt: skip
    assert outcomes["Succeeded"] >= 1, f"no job succeeded: {outcomes} {where}"

    # No duplicated workers or exporters at any sampled moment; nothing left running, nothing orphaned.
    assert sampler.samples > 0 and not sampler.violations, f"{sampler.violations[:5]} {where}"
    uids = {jobs.get(n)["metadata"]["uid"] for n in names}
    for pod in jobs.core.list_namespaced_pod(kube_api.namespace).items:
        owners = {o.uid for o in pod.metadata.owner_references or []}
        assert owners & uids, f"pod {pod.metadata.name} is owned by no job {where}"
        assert pod.status.phase not in ("Pending", "Running"), f"pod {pod.metadata.name} still {pod.status.phase}"

    # Checkpoints: resumes only from committed checkpoints, never from a planted half-written one.
    resumes = 0
    for n in names:
        logs = trainer_logs(jobs, n)
        problems, count = resume_problems(n, logs, torn.planted[n])
        resumes += count
        excerpts = {a: [line for line in text.splitlines() if "checkpoint" in line][-8:] for a, text in logs.items()}
        assert not problems, f"{problems} {where}; checkpoint lines by attempt: {excerpts}"
        problems = torn.committed_objects_match(n)
        assert not problems, f"{problems} {where}"

    # Model versions: complete when served, claimed when written, never rewritten, ready in Triton.
    import tritonclient.http as httpclient

    triton_client = httpclient.InferenceServerClient(triton.http_url)
    versions = 0
    try:
        for n, model in models.items():
            if not (repository / model).is_dir():
                continue
            assert not repository_problems(repository, model), f"{repository_problems(repository, model)} {where}"
            versions += len(served_versions(repository, model))
            status = statuses[n]
            if status["phase"] != "Succeeded":
                continue
            version = status["model"]["version"]
            assert served_versions(repository, model) == [version], f"{n}: one job, one version {where}"
            uid = jobs.get(n)["metadata"]["uid"]
            assert claim_keys(repository, model).get(version) == uid, f"{n}: version {version} not its own {where}"
            assert digests[n] is not None and version_digest(repository, model, version) == digests[n], (
                f"{n}: version {version} of {model} was incomplete or rewritten after it was published {where}"
            )
            eventually(lambda m=model, v=version: triton_client.is_model_ready(m, str(v)), timeout=60,
                       what=f"{model} version {version} ready in Triton")  # fmt: skip
    finally:
        triton_client.close()

    # Deleting the jobs deletes every child.
    for n in names:
        jobs.delete(n)
    eventually(lambda: not any(jobs.exists(n) for n in names), timeout=60, what="jobs deleted")
    eventually(lambda: not any(any(jobs.children(n).values()) for n in names), timeout=60, what="children gone")

    figures = {
        "seed": seed,
        "jobs": JOBS,
        "served_jobs": SERVED,
        "faults": {k: injector.counts[k] for k in FAULTS},
        "faults_total": sum(injector.counts[k] for k in FAULTS),
        "conflicts_armed": injector.counts["conflicts_armed"],
        "outcomes": dict(outcomes),
        "restarts": sum(int(s.get("restarts") or 0) for s in statuses.values()),
        "resumes_from_checkpoint": resumes,
        "torn_checkpoints_planted": sum(len(v) for v in torn.planted.values()),
        "model_versions_served": versions,
        "triton_stuck_starts": triton.stuck_starts,
        "pod_samples": sampler.samples,
        "seconds": round(elapsed, 1),
    }
    print("chaos figures:", json.dumps(figures))
    print("\n".join(injector.log))
