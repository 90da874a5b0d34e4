"""Apply-to-Running latency of FineTuneJobs on the test cluster, with and without Kueue, for 10 and 100 jobs.

On the cluster the cluster tests use (tests/fixtures: the control plane from tests/cluster, two process-runtime
nodes of 8 CPUs, the operator installed in-cluster from its Helm chart with the chart's defaults), N FineTuneJobs
are applied at once by one ``kubectl apply`` and each job's time from the moment that command started to its phase
``Running`` (its worker pod running) is recorded. Without Kueue the jobs carry no queue label and no Kueue runs;
with Kueue, the real Kueue controller (tests/fixtures/kueue.py) is started for the case, with a ClusterQueue whose
quota holds all N jobs and a LocalQueue named in each job's ``kueue.x-k8s.io/queue-name`` label. Cases alternate
without / with for each size and round.

The jobs are as cheap as a job gets: one node, one process, 100m CPU and 128Mi each, and their image's ``python``
is a stub that sleeps. A pod is Running once its container process has started, before any trainer code runs, so
the stub changes nothing that is measured, while 100 real trainers (each importing torch) would need tens of GB and
minutes of both cores and slow down the very components being timed. All jobs of a case are deleted once the last
is Running, and the next case starts when their pods, Jobs and Workloads are gone.

Watches on FineTuneJobs, Jobs, Workloads and pods record, on this machine's clock, when each job's objects were
first seen in each state, which splits the latency into: stored (the API server, with the operator's validating
webhook), the operator creating the Job, Kueue admitting it (its Workload's quota reservation, then the Job
unsuspended), the Job controller creating the pod, the scheduler binding it, the kubelet starting it, and the
operator seeing it run.

    python bench/bench_admission.py                          # 10 and 100 jobs, 2 rounds
    python bench/bench_admission.py --sizes 10 --rounds 1 --no-write

Needs what the cluster tests need (root, scripts/build-cluster.sh and scripts/build-kueue.sh built, helm) and, like
them, the machine's one test cluster: run it when no cluster test runs. Writes bench/results/admission-<time>.json
and the "Admission latency" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the cluster fixtures live with the tests

from bench.markdown import write_section  # noqa: E402
from tests.fixtures import cluster, images, kubelet, kueue  # noqa: E402
from tests.fixtures.kube import KubeApi, eventually  # noqa: E402

SECTION = "## Admission latency: apply to Running, with and without Kueue"
NAMESPACE, RELEASE, QUEUE = "bench", "ft", "bench"
STUB_REPOSITORY = "bench.invalid/finetune/sleeping-trainer"
JOB_LABEL = "finetune.dev/job"
SPEC = {
    "model": {"name": "bert-base-uncased"},
    "dataset": {"train": "s3://data/train.csv"},
    "checkpoint": {"storage": "file:///nonexistent/finetune-bench"},  # nothing is written: the stub trains nothing
    "resources": {"nodes": 1, "processesPerNode": 1, "cpu": "100m", "memory": "128Mi"},
}
STAGES = (  # (name, from event, to event): each job's time between two of its recorded events
    ("apply -> stored", "apply", "ftj"),
    ("stored -> Job created (operator)", "ftj", "job"),
    ("Job -> unsuspended (Kueue admission, in all)", "job", "unsuspended"),
    ("of which: Job -> Workload created", "job", "workload"),
    ("of which: Workload -> quota reserved", "workload", "reserved"),
    ("of which: quota reserved -> Job unsuspended", "reserved", "unsuspended"),
    ("unsuspended -> pod created (Job controller)", "unsuspended", "pod"),
    ("pod created -> scheduled (scheduler)", "pod", "scheduled"),
    ("scheduled -> pod Running (kubelet)", "scheduled", "pod_running"),
    ("pod Running -> job Running (operator)", "pod_running", "Running"),
)


def stub_image(work: Path) -> kubelet.Image:
    """The trainer image with a ``python`` that only sleeps: its pods run as soon as a real trainer's would."""
    venv = work / "sleeping-trainer"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    # PID 1 of its namespace: without a handler SIGTERM would be ignored and every deletion would wait out the
    # grace period.
    python.write_text("#!/bin/sh\ntrap 'exit 0' TERM\nsleep 3600 &\nwait\n")
    python.chmod(0o755)
    return kubelet.Image(venv=venv, env=images.PYTHON_ENV, workdir="/home/finetune", user=10001,
                         accounts=("finetune:x:10001:10001::/home/finetune:/bin/bash",))  # fmt: skip


class Cluster:
    """The test cluster with two nodes, the CRD and the operator from its chart in ``NAMESPACE``."""

    def __init__(self, work: Path, stack: contextlib.ExitStack) -> None:
        if reason := kubelet.supported():
            raise SystemExit(reason)
        started = time.monotonic()
        self.plane = cluster.ControlPlane(cluster.build()).start()
        stack.callback(self.plane.stop)
        registry = images.registry(ROOT / ".cache" / "images")
        registry.add(STUB_REPOSITORY, stub_image(work))
        self.nodes = kubelet.NodePool(self.plane.url, self.plane.pki, self.plane.port, cluster.SERVICE_IP, registry)
        stack.callback(self.nodes.stop)
        for name in ("node-a", "node-b"):
            self.nodes.add(name)
        self.kube = KubeApi(self.plane.kubeconfig, NAMESPACE, work)
        stack.callback(self.kube.close)
        self.kube.kubectl("apply", "--server-side", "-f", str(ROOT / "manifests" / "crd.yaml"))
        eventually(lambda: "Established" in self.kube.kubectl("get", "crd", "finetunejobs.finetune.dev", "-o",
                   "jsonpath={.status.conditions[?(@.status=='True')].type}", check=False).stdout, timeout=60,
                   interval=0.2, what="the FineTuneJob CRD Established")  # fmt: skip
        self.kube.kubectl("create", "namespace", NAMESPACE)
        eventually(lambda: self.kube.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
                   timeout=60, interval=0.2, what="ServiceAccount default")  # fmt: skip
        helm = [str(ROOT / ".cache" / "bin" / "helm"), "--kubeconfig", str(self.plane.kubeconfig), "--namespace",
                NAMESPACE]  # fmt: skip
        installed = subprocess.run([*helm, "install", RELEASE, str(ROOT / "charts" / "finetune-operator"), "--wait",
                                    "--timeout", "180s", "--set", f"trainer.image.repository={STUB_REPOSITORY}"],
                                   capture_output=True, text=True, timeout=240)  # fmt: skip
        if installed.returncode != 0:
            raise RuntimeError(f"helm install failed: {installed.stderr}")
        self.api = self.kube.client()
        self.api.configuration.connection_pool_maxsize = 16
        self.ready_s = time.monotonic() - started


class Recorder:
    """Watches (from a listed resourceVersion, so nothing after ``start`` is missed) that record when each job's
    objects were first seen in each state, on ``time.time()``."""

    def __init__(self, api: Any, with_kueue: bool) -> None:
        from kubernetes import client

        self.seen: dict[str, dict[str, float]] = defaultdict(dict)  # job -> event -> time
        self.job_of: dict[str, str] = {}  # batch Job name -> FineTuneJob name
        self.by_job: dict[str, dict[str, float]] = defaultdict(dict)  # batch Job name -> Workload events
        self.lock = threading.Lock()
        custom, batch, core = client.CustomObjectsApi(api), client.BatchV1Api(api), client.CoreV1Api(api)
        streams: list[tuple[Callable[..., Any], tuple[str, ...], dict[str, str], Callable[[dict, float], None]]] = [
            (custom.list_namespaced_custom_object, ("finetune.dev", "v1alpha1", NAMESPACE, "finetunejobs"), {},
             self._ftj),
            (batch.list_namespaced_job, (NAMESPACE,), {"label_selector": JOB_LABEL}, self._job),
            (core.list_namespaced_pod, (NAMESPACE,), {"label_selector": JOB_LABEL}, self._pod),
        ]  # fmt: skip
        if with_kueue:
            streams.append((custom.list_namespaced_custom_object, ("kueue.x-k8s.io", "v1beta2", NAMESPACE,
                            "workloads"), {}, self._workload))  # fmt: skip
        self.watches = []
        for fn, args, kwargs, handle in streams:
            listed = fn(*args, **kwargs)
            version = listed["metadata"]["resourceVersion"] if isinstance(listed, dict) else \
                listed.metadata.resource_version  # fmt: skip
            self.watches.append(self._follow(fn, args, {**kwargs, "resource_version": version}, handle))

    def _follow(self, fn: Callable[..., Any], args: tuple, kwargs: dict, handle: Callable[[dict, float], None]) -> Any:
        from kubernetes import watch

        w = watch.Watch()

        def run() -> None:
            with contextlib.suppress(Exception):
                for event in w.stream(fn, *args, timeout_seconds=1800, **kwargs):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        with self.lock:
                            handle(event["raw_object"], time.time())

        threading.Thread(target=run, daemon=True).start()
        return w

    def _mark(self, job: str, event: str, t: float) -> None:
        self.seen[job].setdefault(event, t)

    def _ftj(self, obj: dict, t: float) -> None:
        name = obj["metadata"]["name"]
        self._mark(name, "ftj", t)
        if phase := (obj.get("status") or {}).get("phase"):
            self._mark(name, phase, t)

    def _job(self, obj: dict, t: float) -> None:
        owner = obj["metadata"]["labels"][JOB_LABEL]
        self.job_of[obj["metadata"]["name"]] = owner
        self._mark(owner, "job", t)
        if not obj["spec"].get("suspend"):
            self._mark(owner, "unsuspended", t)

    def _workload(self, obj: dict, t: float) -> None:
        owners = [o["name"] for o in obj["metadata"].get("ownerReferences") or [] if o["kind"] == "Job"]
        conditions = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}
        for job in owners:
            self.by_job[job].setdefault("workload", t)
            if conditions.get("QuotaReserved") == "True":
                self.by_job[job].setdefault("reserved", t)
            if conditions.get("Admitted") == "True":
                self.by_job[job].setdefault("admitted", t)

    def _pod(self, obj: dict, t: float) -> None:
        owner = obj["metadata"]["labels"][JOB_LABEL]
        self._mark(owner, "pod", t)
        if obj["spec"].get("nodeName"):
            self._mark(owner, "scheduled", t)
        if (obj.get("status") or {}).get("phase") == "Running":
            self._mark(owner, "pod_running", t)

    def running(self, names: list[str]) -> int:
        with self.lock:
            return sum("Running" in self.seen[n] for n in names)

    def events(self, names: list[str]) -> dict[str, dict[str, float]]:
        """Each job's events, the Workload's folded in through its Job."""
        with self.lock:
            out = {n: dict(self.seen[n]) for n in names}
            for job, events in self.by_job.items():
                if (owner := self.job_of.get(job)) in out:
                    for event, t in events.items():
                        out[owner].setdefault(event, t)
        return out

    def stop(self) -> None:
        for w in self.watches:
            w.stop()


def body(name: str, with_kueue: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if with_kueue:
        meta["labels"] = {kueue.QUEUE_LABEL: QUEUE}
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": meta, "spec": SPEC}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def start_kueue(c: Cluster, n: int) -> kueue.Kueue:
    """Kueue with a ClusterQueue holding all ``n`` jobs (and room to spare), Active before any job is applied."""
    instance = kueue.Kueue(kueue.build(), c.plane).start()
    try:
        kueue.queues(c.kube, QUEUE, cpu=str(n), memory=f"{n}Gi")
        eventually(lambda: "Active" in c.kube.kubectl("get", "clusterqueue", QUEUE, "-o",
                   "jsonpath={.status.conditions[?(@.status=='True')].type}", check=False).stdout, timeout=60,
                   interval=0.2, what="the ClusterQueue Active")  # fmt: skip
    except BaseException:
        instance.stop()
        raise
    return instance


def clear(c: Cluster, with_kueue: bool, timeout: float) -> None:
    """Delete every FineTuneJob and wait until their Jobs, pods (and Workloads) are gone."""
    c.kube.kubectl("delete", "ftj", "--all", "--wait=false", timeout=120)

    def gone() -> bool:
        listed = c.kube.kubectl("get", "jobs,pods", "-l", JOB_LABEL, "-o", "name", check=False)
        ftjs = c.kube.kubectl("get", "ftj", "-o", "name", check=False)
        workloads = "" if not with_kueue else c.kube.kubectl("get", "workloads.kueue.x-k8s.io", "-o", "name",
                                                             check=False).stdout  # fmt: skip
        return listed.returncode == 0 and not (listed.stdout.strip() or ftjs.stdout.strip() or workloads.strip())

    eventually(gone, timeout=timeout, interval=1, what="the case's jobs, pods and workloads gone")


def run_case(c: Cluster, n: int, with_kueue: bool, prefix: str) -> dict[str, Any]:
    names = [f"{prefix}-{i:03d}" for i in range(n)]
    throttled = 0
    instance = start_kueue(c, n) if with_kueue else None
    recorder = Recorder(c.api, with_kueue)
    try:
        manifest = yaml.safe_dump_all([body(name, with_kueue) for name in names])
        t_apply = time.time()
        apply = c.kube.kubectl("apply", "-f", "-", stdin=manifest, timeout=300, check=False)
        applied = time.time() - t_apply
        # A refused create (e.g. the operator's webhook timing out under the burst) is a result, not a crash.
        refused = [line for line in apply.stderr.splitlines() if line.startswith("Error from server")]
        deadline = time.monotonic() + 120 + 3 * n
        while recorder.running(names) < n - len(refused) and time.monotonic() < deadline:
            time.sleep(0.2)
        events = recorder.events(names)
        recorder.stop()
        clear(c, with_kueue, timeout=120 + 2 * n)
        if instance is not None:
            kueue.delete_queues(c.kube, QUEUE)
            throttled = instance.log.read_text(errors="replace").count("client-side throttling")
    finally:
        recorder.stop()
        if instance is not None:
            instance.stop()
    events = {name: e for name, e in events.items() if e}  # refused jobs were never stored
    for e in events.values():
        e["apply"] = t_apply
    done = [e["Running"] - t_apply for e in events.values() if "Running" in e]
    stages = {}
    for stage, start, end in STAGES:
        spans = [e[end] - e[start] for e in events.values() if start in e and end in e]
        if spans:
            stages[stage] = {"p50_s": round(statistics.median(spans), 3), "max_s": round(max(spans), 3)}
    result: dict[str, Any] = {
        "jobs": n, "kueue": with_kueue, "running": len(done), "kubectl_apply_s": round(applied, 2),
        "refused": len(refused), "refusals": refused[:3], "kueue_throttled_log_lines": throttled,
        "stages": stages,
        "events": {name: {k: round(t - t_apply, 3) for k, t in sorted(e.items(), key=lambda kv: kv[1])}
                   for name, e in events.items()},
    }  # fmt: skip
    if done:
        result.update(p50_s=round(statistics.median(done), 2), p90_s=round(percentile(done, 0.9), 2),
                      max_s=round(max(done), 2), last_running_s=round(max(done), 2))  # fmt: skip
    return result


def warm_up(c: Cluster) -> None:
    """One job to Running and gone again: the webhook, the operator's first reconcile and the nodes are warm."""
    run_case(c, 1, False, "warmup")


def load_average() -> float:
    return os.getloadavg()[0]


def summary_rows(cases: list[dict[str, Any]]) -> list[str]:
    rows = ["| Jobs | Kueue | Round | kubectl apply | refused | p50 | p90 | max | last Running |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in cases:
        head = (f"| {r['jobs']} | {'yes' if r['kueue'] else 'no'} | {r['round']} | {r['kubectl_apply_s']:.1f} s "
                f"| {r.get('refused', 0)} ")  # fmt: skip
        if "p50_s" not in r:
            rows.append(head + f"| none of {r['jobs']} Running | | | |")
        else:
            rows.append(head + f"| {r['p50_s']:.1f} s | {r['p90_s']:.1f} s | {r['max_s']:.1f} s "
                        f"| {r['last_running_s']:.1f} s (of {r['running']}) |")  # fmt: skip
    return rows


def stage_rows(cases: list[dict[str, Any]]) -> list[str]:
    """Median over the rounds of each stage's per-case median, per size and Kueue."""
    keys = sorted({(r["jobs"], r["kueue"]) for r in cases})
    head = " | ".join(f"{n} jobs, {'Kueue' if k else 'no Kueue'}" for n, k in keys)
    rows = [f"| Stage (p50 per job; max in brackets) | {head} |", "|---" * (len(keys) + 1) + "|"]
    for stage, _, _ in STAGES:
        cells = []
        for key in keys:
            got = [r["stages"][stage] for r in cases if (r["jobs"], r["kueue"]) == key and stage in r["stages"]]
            cells.append(f"{statistics.median(g['p50_s'] for g in got):.2f} ({max(g['max_s'] for g in got):.2f}) s"
                         if got else "-")  # fmt: skip
        rows.append(f"| {stage} | {' | '.join(cells)} |")
    return rows


def results_path(data: dict[str, Any]) -> Path:
    stamp = data["started"].replace("-", "").replace(":", "").replace("T", "-")
    return ROOT / "bench" / "results" / f"admission-{stamp}.json"


def save(data: dict[str, Any]) -> Path:
    """The raw results so far (rewritten after every case, so that a run cut short keeps what it measured)."""
    out = results_path(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    return out


def measured(run: dict[str, Any]) -> str:
    end = f", {run['load_end']:.1f} at the end" if "load_end" in run else ", the run cut short by an error"
    return (f"`{run['command']}` ({run['started'][:16].replace('T', ' ')} UTC; load average {run['load_start']:.1f} "
            f"at start{end}; cluster ready in {run['cluster_ready_s']:.0f} s)")  # fmt: skip


def write_results(runs: list[dict[str, Any]]) -> None:
    """The section of BENCHMARKS.md from one or more runs' saved results (their cases in run order)."""
    cases = [case for run in runs for case in run["cases"]]
    files = ", ".join(f"`bench/results/{results_path(run).name}`" for run in runs)
    section = "\n".join([
        SECTION, "",
        f"Measured on {runs[0]['machine']}, GPU: none, a shared machine (expect noise), with "
        + "; then ".join(measured(run) for run in runs) + ".",
        "",
        "Method: the cluster the cluster tests use (control plane, two process-runtime nodes of 8 CPUs), the "
        "operator in-cluster from its chart with the chart's defaults. Each case applies N FineTuneJobs (1 node, 1 "
        "process, 100m CPU and 128Mi each) with one `kubectl apply` and times, per job, from the moment that "
        "command started to the job's phase `Running` (its worker pod running) as a watch sees it. Without Kueue "
        "the jobs have no queue label and no Kueue runs; with Kueue, Kueue is started for the case with a "
        "ClusterQueue whose quota holds all N jobs, and each job names its LocalQueue in "
        "`kueue.x-k8s.io/queue-name`. Cases alternate without / with for each size and round, after one warm-up "
        "job. The jobs' image runs a `python` that only sleeps: a pod is Running once its container process "
        "has started, before any trainer code runs, so this changes nothing measured, while 100 real trainers "
        "would each import torch on the same 2 cores as the components being timed. Every job is deleted once the "
        "last one runs, and the next case starts when its pods, Jobs and Workloads are gone.",
        "",
        *summary_rows(cases), "",
        "Where the time goes: each stage is the time between two events of the same job, as watches on "
        "FineTuneJobs, Jobs, Workloads and pods first saw them (this machine's clock; a watch adds milliseconds). "
        "Without Kueue a Job is created unsuspended, so its admission stage is zero.",
        "",
        *stage_rows(cases), "",
        f"Raw numbers (every job's events): {files}.", "",
    ])  # fmt: skip
    write_section(ROOT / "BENCHMARKS.md", SECTION, section)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=2, help="without/with pairs per size")
    parser.add_argument("--first-round", type=int, default=0, help="number of the first round (a later run's)")
    parser.add_argument("--no-write", action="store_true", help="print results only")
    parser.add_argument(
        "--section-from",
        type=Path,
        nargs="+",
        metavar="RESULTS",
        help="only rewrite the BENCHMARKS.md section from these saved results, in order",
    )
    args = parser.parse_args()
    if args.section_from:
        write_results([json.loads(path.read_text()) for path in args.section_from])
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still tears the cluster down
    data: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": f"{os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}",
        "load_start": load_average(), "cases": [],
    }  # fmt: skip
    command = "python bench/bench_admission.py" + (
        f" --sizes {' '.join(map(str, args.sizes))}" if args.sizes != [10, 100] else "") + (
        f" --rounds {args.rounds}" if args.rounds != 2 else "") + (
        f" --first-round {args.first_round}" if args.first_round else "")  # fmt: skip
    data["command"] = command
    with tempfile.TemporaryDirectory(prefix="bench-admission-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        c = Cluster(work, stack)
        data["cluster_ready_s"] = round(c.ready_s, 1)
        print(f"cluster ready in {c.ready_s:.1f}s", flush=True)
        warm_up(c)
        for n in args.sizes:
            for r in range(args.first_round, args.first_round + args.rounds):
                for with_kueue in (False, True):
                    began = time.monotonic()
                    case = run_case(c, n, with_kueue, f"n{n}-r{r}-{'q' if with_kueue else 'p'}")
                    case.update(round=r, case_s=round(time.monotonic() - began, 1))
                    data["cases"].append(case)
                    print(json.dumps({k: v for k, v in case.items() if k != "events"}), flush=True)
                    if not args.no_write:
                        save(data)
    data["load_end"] = load_average()
    if not args.no_write:
        write_results([data])
        print(f"wrote {save(data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
