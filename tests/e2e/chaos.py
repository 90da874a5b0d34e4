"""Chaos for the end-to-end flow: a Triton that can be restarted, a seeded fault injector, a pod sampler, and
the invariant checks on checkpoints and the model repository (used by test_chaos.py).

Every fault is injected through a real part: worker processes SIGKILLed by the node agent, the operator
process SIGKILLed and started again, the SeaweedFS and Triton processes stopped and started on the same ports,
409 Conflict answers and dropped watch streams from the API stand-in.
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
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_operator.serve_local import server_command
from finetune_trainer import triton_repo
from tests.fixtures.triton import _die_with_parent, _grpc_live, free_port

FAULTS = ("kill_worker", "kill_operator", "restart_s3", "restart_triton", "api_conflict", "drop_watches")
ACTIVE_PHASES = ("Pending", "Running")


class RestartableTriton:
    """tritonserver on fixed loopback ports, stopped and started again like a restarted Triton pod.

    On start it loads every model that has a config in the repository, as the chart's ``triton.loadModels``
    does for the models it names (explicit model control loads nothing by itself).
    """

    def __init__(self, install: Any, repository: Path, log_path: Path, extra: tuple[str, ...] = ()) -> None:
        self.install, self.repository, self.log_path, self.extra = install, repository, log_path, list(extra)
        self.ports = (free_port(), free_port(), free_port())
        self.proc: subprocess.Popen[bytes] | None = None
        self.stuck_starts = 0

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    def start(self, timeout: float = 45.0, attempts: int = 3) -> None:
        """Start and wait until HTTP and gRPC answer. A start that hangs (Triton loading a version whose files a
        publisher's rollback deletes meanwhile, see docs/reliability.md) is killed and started again, as the
        kubelet restarts a pod that fails its startup probe; ``stuck_starts`` counts those."""
        for attempt in range(1, attempts + 1):
            if self._start_once(timeout):
                return
            self.stop()
            self.stuck_starts += 1
            if attempt == attempts:
                raise RuntimeError(f"tritonserver not live after {attempts} starts of {timeout}s: see {self.log_path}")

    def _start_once(self, timeout: float) -> bool:
        models = sorted(p.parent.name for p in self.repository.glob("*/config.pbtxt"))
        extra = ["--exit-timeout-secs=3", *(f"--load-model={m}" for m in models), *self.extra]
        argv, env = server_command(self.install, self.repository, *self.ports, load_all=False, extra=extra)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}: see {self.log_path}")
            live = f"http://{self.http_url}/v2/health/live"
            with contextlib.suppress(OSError), urllib.request.urlopen(live, timeout=1) as r:
                if r.status == 200 and _grpc_live(f"127.0.0.1:{self.ports[1]}"):
                    return True
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        """SIGTERM the server's process group (it holds the Python-backend stubs), SIGKILL what is left."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def chaos_seed() -> int:
    """FINETUNE_CHAOS_SEED, else a fresh random seed (printed by the test, so a failure can be replayed)."""
    raw = os.environ.get("FINETUNE_CHAOS_SEED", "").strip()
    return int(raw) if raw else random.SystemRandom().randrange(2**31)


def schedule(rng: random.Random, total: int) -> list[str]:
    """``total`` faults: every kind once (in a random order), then random extra faults, worker kills weighted up."""
    kinds = list(FAULTS)
    rng.shuffle(kinds)
    weights = [3 if k == "kill_worker" else 1 for k in FAULTS]
    return (kinds + rng.choices(FAULTS, weights=weights, k=max(total - len(kinds), 0)))[:total]


# ------------------------------------------------------------------------------------------------ sampler


@dataclass
class PodSampler:
    """Lists the test namespace's pods several times a second from its own thread and records every moment a
    job had more live pods of one kind than it may (duplicated workers or exporters)."""

    core: Any
    namespace: str
    workers_per_job: int = 1
    interval: float = 0.25
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
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # the API stand-in is never down; a slow answer is skipped
                self.check(self.core.list_namespaced_pod(self.namespace, _request_timeout=5).items)

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
    kube: Any  # tests.fixtures.kube.KubeApi
    jobs: Any  # tests.e2e.conftest.Jobs
    node_agent: Any
    operator: Any  # tests.e2e.conftest.Operator
    s3: Any  # tests.fixtures.s3.S3Server
    triton: RestartableTriton
    torn: TornCheckpoints
    counts: Counter = field(default_factory=Counter)
    log: list[str] = field(default_factory=list)

    def inject(self, kind: str) -> bool:
        """Inject ``kind``; False when there was nothing to inject it into (e.g. no running pod)."""
        done = getattr(self, kind)()
        if done:
            self.counts[kind] += 1
        return done

    def note(self, text: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {text}")

    def running_pods(self) -> list[Any]:
        pods = self.jobs.core.list_namespaced_pod(self.kube.namespace).items
        return [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]

    def kill_worker(self) -> bool:
        pods = self.running_pods()
        if not pods:
            return False
        pod = self.rng.choice(sorted(pods, key=lambda p: p.metadata.name))
        labels = pod.metadata.labels or {}
        if labels.get("app.kubernetes.io/component") == "trainer" and self.s3.server.running:
            self.torn.plant(labels["finetune.dev/job"])
        killed = self.node_agent.kill_pod(self.kube.namespace, pod.metadata.name, signal.SIGKILL)
        self.note(f"SIGKILL {pod.metadata.name} ({killed} process group(s))")
        return killed > 0

    def kill_operator(self) -> bool:
        self.operator.kill()
        time.sleep(self.rng.uniform(0.2, 2.0))
        self.operator.start()
        self.note(f"operator SIGKILLed and started again (run {self.operator.runs})")
        return True

    def restart_s3(self) -> bool:
        crash = self.rng.random() < 0.5
        self.s3.stop(crash=crash)
        down = self.rng.uniform(1.0, 4.0)
        time.sleep(down)
        self.s3.start()
        self.note(f"S3 {'killed' if crash else 'stopped'} for {down:.1f}s and started again")
        return True

    def restart_triton(self) -> bool:
        self.triton.stop()
        down = self.rng.uniform(0.5, 2.0)
        time.sleep(down)
        self.triton.start()
        self.note(f"Triton stopped for {down:.1f}s and started again")
        return True

    def api_conflict(self) -> bool:
        resource = self.rng.choice(["finetunejobs.finetune.dev", "pods"])
        n = self.rng.randint(2, 6)
        self.kube.fail_next_writes(resource, n)
        self.counts["conflicts_armed"] += n
        self.note(f"next {n} updates/patches of {resource} answered 409 Conflict")
        return True

    def drop_watches(self) -> bool:
        abrupt = self.rng.random() < 0.5
        n = self.kube.drop_watches(abrupt)
        self.note(f"{n} watch streams dropped{' abruptly' if abrupt else ''}")
        return True


# ------------------------------------------------------------------------------------------- checkpoints


@dataclass
class TornCheckpoints:
    """Plants half-written checkpoints beside a job's real ones, as a save killed mid-upload leaves them: one
    with objects but no manifest, one whose manifest does not match its object. Neither may ever be resumed."""

    client: Any  # boto3 S3 client
    bucket: str
    prefix: str  # <prefix>/<namespace>/<job>/checkpoint-...
    namespace: str
    planted: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))

    def plant(self, job: str) -> None:
        base = f"{self.prefix}/{self.namespace}/{job}"
        no_manifest, bad_manifest = 9_999_999, 9_999_998
        with contextlib.suppress(Exception):  # S3 may be restarting; then nothing is planted
            self.client.put_object(Bucket=self.bucket, Key=f"{base}/checkpoint-{no_manifest:08d}/state.pt", Body=b"x")
            self.client.put_object(Bucket=self.bucket, Key=f"{base}/checkpoint-{bad_manifest:08d}/state.pt", Body=b"y")
            manifest = {
                "format": 1,
                "step": bad_manifest,
                "metric": None,
                "world_size": 1,
                "save_id": "torn",
                "objects": [{"key": "state.pt", "size": 1, "sha256": hashlib.sha256(b"z").hexdigest()}],
            }
            self.client.put_object(Bucket=self.bucket, Key=f"{base}/checkpoint-{bad_manifest:08d}/manifest.json",
                                   Body=json.dumps(manifest).encode())  # fmt: skip
            self.planted[job] |= {no_manifest, bad_manifest}

    def committed_objects_match(self, job: str) -> list[str]:
        """Problems with the job's committed (manifest-bearing) checkpoints, planted ones aside."""
        base = f"{self.prefix}/{self.namespace}/{job}/"
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
            step, resumes = int(m.group(1)), resumes + 1
            if step in planted or step not in committed:
                problems.append(
                    f"{job} attempt {attempt} resumed from step {step}; committed before: {sorted(committed)}"
                )
        committed |= {int(s) for s in COMMITTED.findall(text)}
    return problems, resumes


# ----------------------------------------------------------------------------------------- model versions


def version_digest(repository: Path, model: str, version: int) -> str | None:
    """sha256 over the files of version ``version`` of the model's three versioned parts; None when the
    version is incomplete (a publisher died while writing it)."""
    parts = [repository / name / str(version) for name in (model, f"{model}_tokenizer", f"{model}_postprocess")]
    needed = [parts[0] / "model.onnx", parts[0] / "model.py", parts[1] / "model.py", parts[2] / "model.py"]
    if not all(p.is_file() for p in needed):
        return None
    sha = hashlib.sha256()
    for part in parts:
        # Triton's Python backend caches bytecode beside model.py; that is Triton's, not the publisher's.
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
