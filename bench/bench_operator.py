"""Operator scale: apply-to-pods latency, reconcile throughput and operator memory for 10, 100 and 1000 jobs.

Against the test cluster's real control plane (tests/fixtures/cluster.py: etcd, kube-apiserver, the
controller-manager's Job controller, the scheduler; scripts/build-cluster.sh builds it) with the real operator
process (`python -m finetune_operator`) out of cluster. No node runs: the Job controller creates the pods, which
stay Pending, which is what is measured here (from `kubectl apply` to the worker pods existing).

For each N, in a fresh namespace with a freshly started operator:

1. Latency: N FineTuneJobs are applied at a steady rate (``--rate`` jobs/s); for each, the time from the
   create request to its first worker pod appearing in a watch of pods (p50, p99, max).
2. Throughput: N more jobs are applied at once (a burst from several client threads); jobs fully reconciled
   (config map, service and pod created, status written) per second until the last pod appears.
3. Memory: the operator's RSS once all 2N jobs are reconciled (and its peak, VmHWM).

    python bench/bench_operator.py                      # 10, 100, 1000 jobs
    python bench/bench_operator.py --sizes 10 100 --rate 20

Writes bench/results/operator-<date>.json and the "Operator scale" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test cluster lives with the tests

from tests.fixtures.processes import stop_process_group  # noqa: E402

SECTION = "## Operator scale"
SPEC = {
    "model": {"name": "bert-base-uncased"},
    "dataset": {"train": "s3://data/train.csv"},
    "checkpoint": {"storage": "s3://finetune-bench/checkpoints"},  # nothing is written: pods never run
    "resources": {"nodes": 1, "cpu": "1", "memory": "1Gi"},
}


def served(api_client: Any, timeout: float = 60) -> None:
    """Wait until the API server serves the new CRD's kind."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    while True:
        try:
            client.CustomObjectsApi(api_client).list_cluster_custom_object("finetune.dev", "v1alpha1", "finetunejobs")
            return
        except ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


class PodWatch:
    """Records when the first pod of each job appears (a watch on pods in one namespace)."""

    def __init__(self, api_client: Any, namespace: str):
        from kubernetes import client, watch

        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self._watch = watch.Watch()
        self._core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self._watch.stream(self._core.list_namespaced_pod, self.namespace, timeout_seconds=3600):
                labels = event["object"].metadata.labels or {}
                job = labels.get("finetune.dev/job")
                if job:
                    with self.lock:
                        self.seen.setdefault(job, time.monotonic())
        except Exception:
            return

    def wait(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(n in self.seen for n in names):
                    return
            time.sleep(0.05)
        missing = [n for n in names if n not in self.seen]
        raise TimeoutError(f"{len(missing)} jobs without pods after {timeout}s (e.g. {missing[:3]})")

    def stop(self) -> None:
        self._watch.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def start_operator(kubeconfig: Path, namespace: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "FINETUNE_METRICS_PORT": str(free_port()),
        "FINETUNE_METRICS_ADDRESS": "127.0.0.1",
        "FINETUNE_POLL_SECONDS": "30",
    }
    cmd = [sys.executable, "-m", "finetune_operator", f"--namespace={namespace}", "--log-format=plain"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while b"Initial authentication has finished" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"operator did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process_group(proc, timeout=30)


def body(name: str) -> dict[str, Any]:
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": SPEC}


def round_(api_client: Any, kubeconfig: Path, n: int, rate: float, work: Path) -> dict[str, Any]:
    from kubernetes import client

    namespace = f"bench-{n}"
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": namespace}})
    custom = client.CustomObjectsApi(api_client)
    watch = PodWatch(api_client, namespace)
    proc = start_operator(kubeconfig, namespace, work / f"operator-{n}.log")
    try:
        # A warm-up job: its pod proves the operator is watching.
        custom.create_namespaced_custom_object("finetune.dev", "v1alpha1", namespace, "finetunejobs", body("warmup"))
        watch.wait(["warmup"], timeout=60)
        # 1. Latency at a steady apply rate.
        started: dict[str, float] = {}
        names = [f"paced-{i}" for i in range(n)]
        t0 = time.monotonic()
        for i, name in enumerate(names):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            started[name] = time.monotonic()
            custom.create_namespaced_custom_object("finetune.dev", "v1alpha1", namespace, "finetunejobs", body(name))
        watch.wait(names, timeout=120 + n)
        latencies = [watch.seen[name] - started[name] for name in names]

        # 2. Throughput of a burst.
        burst = [f"burst-{i}" for i in range(n)]
        b0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda nm: custom.create_namespaced_custom_object(
                "finetune.dev", "v1alpha1", namespace, "finetunejobs", body(nm)), burst))  # fmt: skip
        applied = time.monotonic() - b0
        watch.wait(burst, timeout=300 + 2 * n)
        done = max(watch.seen[name] for name in burst) - b0
        time.sleep(2.0)  # let the last status writes land before measuring memory
        rss, peak = rss_mb(proc.pid)
    finally:
        stop(proc)
        watch.stop()
    return {
        "jobs": n,
        "rate_per_s": rate,
        "apply_to_pods_p50_s": round(statistics.median(latencies), 4),
        "apply_to_pods_p99_s": round(percentile(latencies, 0.99), 4),
        "apply_to_pods_max_s": round(max(latencies), 4),
        "burst_apply_s": round(applied, 2),
        "burst_reconciled_per_s": round(n / done, 1),
        "operator_rss_mb": round(rss, 1),
        "operator_peak_rss_mb": round(peak, 1),
        "jobs_held_by_operator": 2 * n,
    }


def write_results(results: list[dict[str, Any]], command: str) -> None:
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    out = ROOT / "bench" / "results" / f"operator-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = (
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), Python {platform.python_version()}"
    )
    out.write_text(json.dumps({"date": date, "command": command, "machine": machine, "results": results}, indent=2))
    rows = [
        "| jobs | apply rate | apply-to-pods p50 / p99 / max | burst: reconciled jobs/s | operator RSS (peak) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['jobs']} (+{r['jobs']} burst) | {r['rate_per_s']:g}/s | {r['apply_to_pods_p50_s'] * 1000:.0f} / "
            f"{r['apply_to_pods_p99_s'] * 1000:.0f} / {r['apply_to_pods_max_s'] * 1000:.0f} ms | "
            f"{r['burst_reconciled_per_s']:g} | {r['operator_rss_mb']:.0f} MB ({r['operator_peak_rss_mb']:.0f} MB) |"
        )
    section = "\n".join(
        [
            SECTION,
            "",
            f"Measured {date} with `{command}` on {machine}; a shared machine (expect noise). The test "
            "cluster's control plane (etcd, kube-apiserver, controller-manager, scheduler) runs on loopback; "
            "the operator is the real `python -m finetune_operator` process, restarted for each size; no node, "
            "so the Job controller's pods are created and stay Pending. Latency: jobs applied one by one at "
            "the given rate, from the create request to the job's first worker pod in a watch. Throughput: as "
            "many jobs again applied at once by 8 client "
            "threads, divided by the time until the last one's pod appeared. RSS: the operator holding all "
            "2 x N jobs. Targets: p99 apply-to-pods under 1 s and RSS under 200 MB at 1000 jobs.",
            "",
            *rows,
            "",
            f"Raw numbers: `bench/results/{out.name}`.",
            "",
        ]
    )
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[nxt + 1 :] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rate", type=float, default=20.0, help="jobs per second for the latency measurement")
    parser.add_argument("--no-write", action="store_true", help="print results only")
    args = parser.parse_args()
    from kubernetes import client, config

    from finetune_operator import crd
    from tests.fixtures.cluster import ControlPlane, build

    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        work = Path(tmp)
        plane = ControlPlane(build(), work / "cluster").start()
        kubeconfig = plane.kubeconfig
        try:
            api_client = config.new_client_from_config(config_file=str(kubeconfig))
            api_client.configuration.connection_pool_maxsize = 16
            client.ApiextensionsV1Api(api_client).create_custom_resource_definition(crd.crd())
            served(api_client)
            results = []
            for n in args.sizes:
                result = round_(api_client, kubeconfig, n, args.rate, work)
                print(json.dumps(result), flush=True)
                results.append(result)
        finally:
            plane.stop()
    if not args.no_write:
        command = "python bench/bench_operator.py" + (
            f" --sizes {' '.join(map(str, args.sizes))}" if args.sizes != [10, 100, 1000] else ""
        ) + (f" --rate {args.rate:g}" if args.rate != 20.0 else "")  # fmt: skip
        write_results(results, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
