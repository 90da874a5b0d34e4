"""Chaos on the test cluster: a seeded schedule of faults injected through the real parts, a pod sampler, and the
invariant checks on checkpoints and the model repository (used by test_chaos.py).

Faults: a worker's trainer processes SIGKILLed mid-training (after a checkpoint was committed, so that the next
attempt has one to resume from), the operator's pod deleted (its Deployment makes another), the S3 server stopped
or killed and started again on its port, the chart's Triton pod deleted, and etcd with the API server killed and
restarted with their data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_trainer import triton_repo
from tests.cluster.conftest import get_json, status, step
from tests.cluster.processes import signal_all, worker_processes
from tests.fixtures.cluster import ControlPlane
from tests.fixtures.kube import KubeApi
from tests.fixtures.s3 import S3Server

FAULTS = ("kill_worker", "delete_operator", "restart_s3", "delete_triton", "crash_control_plane")
ACTIVE_PHASES = ("Pending", "Running")
OPERATOR = "app.kubernetes.io/name=finetune-operator,app.kubernetes.io/component=operator"
TRITON = "app.kubernetes.io/component=triton"


def chaos_seed() -> int:
    """FINETUNE_CHAOS_SEED, else a fresh random seed (printed by the test, so a failure can be replayed)."""
    raw = os.environ.get("FINETUNE_CHAOS_SEED", "").strip()
    return int(raw) if raw else random.SystemRandom().randrange(2**31)


def schedule(rng: random.Random, total: int, kills: int) -> list[str]:
    """``total`` faults: every kind once and at least ``kills`` worker kills, in a random order."""
    plan = list(FAULTS) + ["kill_worker"] * max(kills - 1, 0)
    plan += rng.choices(FAULTS, k=max(total - len(plan), 0))
    rng.shuffle(plan)
    return plan


# ------------------------------------------------------------------------------------------------ sampler


@dataclass
class PodSampler:
    """Lists the namespace's pods several times a second from its own thread and records every moment a job had
    more live pods of one kind than it may (duplicated workers or exporters)."""

    kube: KubeApi
    workers_per_job: int = 1
    interval: float = 0.5
    samples: int = 0
    violations: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> PodSampler:
        self._thread = threading.Thread(target=self._run, name="pod-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.kube.client())
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # the API server may be down: that moment is not sampled
                self.check(core.list_namespaced_pod(self.kube.namespace, _request_timeout=5).items)

    def check(self, pods: list[Any]) -> None:
        self.samples += 1
        live: dict[tuple[str, str], list[str]] = defaultdict(list)
        for pod in pods:
            labels = pod.metadata.labels or {}
            job, component = labels.get("finetune.dev/job"), labels.get("app.kubernetes.io/component")
            if job and pod.status.phase in ACTIVE_PHASES:  # deleting but still running counts too
                live[(job, component)].append(pod.metadata.name)
        for (job, component), names in live.items():
            allowed = self.workers_per_job if component == "trainer" else 1
            if len(names) > allowed:
                self.violations.append(f"{job}: {len(names)} live {component} pods at once: {sorted(names)}")


# ------------------------------------------------------------------------------------------------ injector


@dataclass
class Injector:
    """Injects one fault at a time through the real parts; counts what was actually injected."""

    rng: random.Random
    kube: KubeApi
    plane: ControlPlane
    s3: S3Server
    torn: TornCheckpoints
    every: int  # the jobs' checkpoint.everySteps
    counts: Counter = field(default_factory=Counter)
    killed: Counter = field(default_factory=Counter)  # worker kills per job
    log: list[str] = field(default_factory=list)

    def inject(self, kind: str) -> bool:
        """Inject ``kind``; False when there was nothing to inject it into (e.g. no worker past a checkpoint)."""
        try:
            done = getattr(self, kind)()
        except (AssertionError, subprocess.SubprocessError) as e:  # the API server was not answering: later
            self.note(f"{kind} not injected: {str(e)[:200]}")
            return False
        if done:
            self.counts[kind] += 1
        return done

    def note(self, text: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {text}")

    def running(self, selector: str) -> list[dict[str, Any]]:
        pods = get_json(self.kube, "pods", "-l", selector)["items"]
        return [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
                and all(c.get("state", {}).get("running") for c in p["status"].get("containerStatuses") or [{}])]

    def kill_worker(self) -> bool:
        """SIGKILL the trainer processes of a worker whose own attempt has committed a checkpoint (so the next
        attempt has one to resume from) and is not near its last step; the job killed least so far first."""
        candidates = []
        for pod in self.running("app.kubernetes.io/component=trainer"):
            labels = pod["metadata"]["labels"]
            job, attempt = labels["finetune.dev/job"], int(labels["finetune.dev/attempt"])
            s = status(self.kube, job)
            total = (s.get("progress") or {}).get("totalSteps") or 0
            if s.get("phase") != "Running" or s.get("attempt") != attempt or step(s) >= total - self.every:
                continue
            log = self.kube.kubectl("logs", pod["metadata"]["name"], "--tail=-1", check=False).stdout
            if committed := [int(n) for n in COMMITTED.findall(log)]:
                candidates.append((self.killed[job], pod["metadata"]["name"], pod, job, step(s), max(committed)))
        if not candidates:
            return False
        fewest = min(c[0] for c in candidates)
        _, name, pod, job, at, checkpoint = self.rng.choice(sorted(c for c in candidates if c[0] == fewest))
        pids = worker_processes(pod)
        if not pids:
            return False
        self.torn.plant(job)
        signal_all(pids, signal.SIGKILL)
        self.killed[job] += 1
        self.note(f"SIGKILL the trainer of {name} at step {at} (this attempt committed checkpoint {checkpoint})")
        return True

    def delete_operator(self) -> bool:
        return self._delete_pods(OPERATOR, "operator")

    def delete_triton(self) -> bool:
        return self._delete_pods(TRITON, "Triton")

    def _delete_pods(self, selector: str, what: str) -> bool:
        """Delete the running pods ``selector`` names; their Deployment makes new ones."""
        pods = self.running(selector)
        if not pods:
            return False
        self.kube.kubectl("delete", "pod", *(p["metadata"]["name"] for p in pods), "--wait=false")
        self.note(f"{what} pod {pods[0]['metadata']['name']} deleted")
        return True

    def restart_s3(self) -> bool:
        crash = self.rng.random() < 0.5
        self.s3.server.stop(crash=crash)
        down = self.rng.uniform(2.0, 6.0)
        time.sleep(down)
        self.s3.server.start()
        self.note(f"S3 {'killed' if crash else 'stopped'} for {down:.1f}s and started again")
        return True

    def crash_control_plane(self) -> bool:
        self.plane.kill("kube-apiserver")
        self.plane.kill("etcd")
        down = self.rng.uniform(2.0, 6.0)
        time.sleep(down)
        self.plane.restart("etcd")
        self.plane.restart("kube-apiserver")
        self.note(f"etcd and kube-apiserver killed, restarted after {down:.1f}s")
        return True


# ------------------------------------------------------------------------------------------- checkpoints


@dataclass
class TornCheckpoints:
    """Plants half-written checkpoints beside a job's real ones, as a save killed mid-upload leaves them: one
    with objects but no manifest, one whose manifest does not match its object. Neither may ever be resumed."""

    client: Any  # boto3 S3 client
    bucket: str
    bases: dict[str, str] = field(default_factory=dict)  # job -> the key prefix of its status.storage
    planted: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))

    def base(self, job: str) -> str:
        return self.bases[job]

    def plant(self, job: str) -> None:
        if job not in self.bases:
            return
        base = self.base(job)
        no_manifest, bad_manifest = 9_999_999, 9_999_998
        with contextlib.suppress(Exception):  # S3 may be restarting; then nothing is planted
            self.client.put_object(Bucket=self.bucket, Key=f"{base}/checkpoint-{no_manifest:08d}/state.pt", Body=b"x")
            self.client.put_object(Bucket=self.bucket, Key=f"{base}/checkpoint-{bad_manifest:08d}/state.pt", Body=b"y")
            manifest = {
                "format": 1, "step": bad_manifest, "metric": None, "world_size": 1, "save_id": "torn",
                "objects": [{"key": "state.pt", "size": 1, "sha256": hashlib.sha256(b"z").hexdigest()}],
            }  # fmt: skip
            self.client.put_object(Bucket=self.bucket, Key=f"{base}/checkpoint-{bad_manifest:08d}/manifest.json",
                                   Body=json.dumps(manifest).encode())  # fmt: skip
            self.planted[job] |= {no_manifest, bad_manifest}

    def committed_objects_match(self, job: str) -> list[str]:
        """Problems with the job's committed (manifest-bearing) checkpoints, planted ones aside."""
        base = self.base(job) + "/"
        keys = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            keys.update({o["Key"][len(base) :]: o["Size"] for o in page.get("Contents", [])})
        problems = []
        for key in sorted(keys):
            m = re.match(r"^checkpoint-(\d+)/manifest\.json$", key)
            if not m or int(m.group(1)) in self.planted[job]:
                continue
            manifest = json.loads(self.client.get_object(Bucket=self.bucket, Key=base + key)["Body"].read())
            for obj in manifest["objects"]:
                path = f"checkpoint-{m.group(1)}/{obj['key']}"
                if path not in keys:
                    problems.append(f"{job}: {path} listed in a manifest is missing")
                    continue
                data = self.client.get_object(Bucket=self.bucket, Key=base + path)["Body"].read()
                if len(data) != obj["size"] or hashlib.sha256(data).hexdigest() != obj["sha256"]:
                    problems.append(f"{job}: {path} does not match its manifest")
        return problems


RESUMED = re.compile(r"resumed from checkpoint at step (\d+)")
COMMITTED = re.compile(r"checkpoint-(\d+) committed")


def resume_problems(job: str, logs_by_attempt: dict[int, str], planted: set[int]) -> tuple[list[str], int]:
    """Each attempt may resume only from a checkpoint an earlier attempt committed; returns (problems, resumes)."""
    problems, committed, resumes = [], set(), 0
    for attempt in sorted(logs_by_attempt):
        text = logs_by_attempt[attempt]
        for m in RESUMED.finditer(text):
            at, resumes = int(m.group(1)), resumes + 1
            if at in planted or at not in committed:
                problems.append(f"{job} attempt {attempt} resumed from step {at}; committed: {sorted(committed)}")
        committed |= {int(s) for s in COMMITTED.findall(text)}
    return problems, resumes


# ----------------------------------------------------------------------------------------- model versions


def download(s3: S3Server, prefix: str, into: Path) -> Path:
    """A local copy of everything under ``prefix`` (the S3 model repository, to check as files)."""
    client = s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=f"{prefix}/"):
        for o in page.get("Contents", []):
            if o["Key"].endswith("/"):  # a folder marker
                continue
            path = into / o["Key"][len(prefix) + 1 :]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(client.get_object(Bucket=s3.bucket, Key=o["Key"])["Body"].read())
    return into


def version_digest(repository: Path, model: str, version: int) -> str | None:
    """sha256 over the files of version ``version`` of the model's three versioned parts; None when the
    version is incomplete (a publisher died while writing it)."""
    parts = [repository / name / str(version) for name in (model, f"{model}_tokenizer", f"{model}_postprocess")]
    needed = [parts[0] / "model.onnx", parts[0] / "model.py", parts[1] / "model.py", parts[2] / "model.py"]
    if not all(p.is_file() for p in needed):
        return None
    sha = hashlib.sha256()
    for part in parts:
        for f in sorted(p for p in part.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            sha.update(str(f.relative_to(repository)).encode())
            sha.update(f.read_bytes())
    return sha.hexdigest()


def claim_keys(repository: Path, model: str) -> dict[int, str | None]:
    """Version -> the idempotency key its claim records (the publishing job's uid)."""
    claims = repository / model / ".claims"
    found = {}
    for path in sorted(claims.glob("*.json")) if claims.is_dir() else []:
        with contextlib.suppress(ValueError):
            found[int(path.stem)] = json.loads(path.read_text()).get("key")
    return found


def served_versions(repository: Path, model: str) -> list[int]:
    config = repository / model / "config.pbtxt"
    return triton_repo.served_versions(triton_repo.parse_config(config.read_text())) if config.is_file() else []


def _written(folder: Path) -> bool:
    """A folder holding a finished file (a temporary file of a killed writer does not count)."""
    return any(f.is_file() and ".tmp-" not in f.name and "__pycache__" not in f.parts for f in folder.rglob("*"))


def repository_problems(repository: Path, model: str) -> list[str]:
    """Every version a config serves is complete; every version folder was claimed; returns the problems."""
    problems = []
    served = served_versions(repository, model)
    claims = {int(p.stem) for p in (repository / model / ".claims").glob("*.json")}
    folders = {int(p.name) for p in (repository / model).iterdir() if p.name.isdigit() and _written(p)}
    for v in served:
        if version_digest(repository, model, v) is None:
            problems.append(f"{model}: config serves version {v}, which is incomplete")
    for v in folders - claims:
        problems.append(f"{model}: version folder {v} was written without a claim")
    return problems
