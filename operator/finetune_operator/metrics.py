"""The operator's own Prometheus metrics, served on FINETUNE_METRICS_PORT (default 9090).

- ``finetune_operator_jobs{namespace,phase}``: jobs by phase, computed at scrape time from kopf's in-memory
  index of FineTuneJobs (a custom Collector: no counter to keep in step by hand).
- ``finetune_operator_reconcile_duration_seconds``: time of one reconcile of one job.
- ``finetune_operator_restarts_total{namespace,job}``: worker-group restarts.
- ``finetune_operator_publish_duration_seconds``: from export start to the model answering in Triton.
- ``finetune_operator_publish_failures_total{namespace,job}``: failed export/publish pods and timeouts.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from finetune_operator.status import PHASES

JobsSource = Callable[[], Iterable[tuple[str, ...]]]


def phases_of(index: Mapping[Any, Iterable[Any]]) -> Iterable[tuple[str, ...]]:
    """(namespace, job, phase[, "stalled"]) of each job in a kopf index keyed by namespace with (job, phase[,
    stalled]) values."""
    for namespace, values in list(index.items()):
        for name, phase, *stalled in list(values):
            yield (str(namespace), str(name), str(phase or "Pending"), *(["stalled"] if any(stalled) else []))


class JobsCollector(Collector):
    """finetune_operator_jobs{namespace,phase} (every known phase reported) and finetune_operator_job_info
    {namespace,job,phase} (1 per job), computed at scrape time."""

    def __init__(self) -> None:
        self.source: JobsSource | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        # (namespace, job, phase[, "stalled"]); a (namespace, phase) pair counts a job whose name is not known.
        given = list(self.source() if self.source else ())
        jobs = [t[:3] if len(t) >= 3 else (t[0], "", t[1]) for t in given]
        stalled = GaugeMetricFamily("finetune_operator_job_stalled", "1 while a job's Stalled condition is True",
                                    labels=["namespace", "job"])  # fmt: skip
        for t in given:
            if len(t) == 4:
                stalled.add_metric([t[0], t[1]], 1)
        family = GaugeMetricFamily("finetune_operator_jobs", "FineTuneJobs by phase", labels=["namespace", "phase"])
        counts = Tally((ns, phase) for ns, _, phase in jobs)
        for ns in sorted({ns for ns, _, _ in jobs}):
            for phase in PHASES:
                family.add_metric([ns, phase], counts.get((ns, phase), 0))
        yield family
        info = GaugeMetricFamily(
            "finetune_operator_job_info",
            "One series per FineTuneJob with its phase",
            labels=["namespace", "job", "phase"],
        )
        for ns, name, phase in sorted(jobs):
            if name:
                info.add_metric([ns, name, phase], 1)
        yield info
        yield stalled


class OperatorMetrics:
    """All operator metrics in one registry (one per process; tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = JobsCollector()
        self.registry.register(self.jobs)
        self.reconcile_duration = Histogram(
            "finetune_operator_reconcile_duration_seconds",
            "Time of one reconcile of one FineTuneJob",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.restarts = Counter(
            "finetune_operator_restarts", "Worker-group restarts", ["namespace", "job"], registry=self.registry
        )
        self.publish_duration = Histogram(
            "finetune_operator_publish_duration_seconds",
            "From the start of export to the model answering in Triton",
            buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200),
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "finetune_operator_publish_failures",
            "Failed export or publication attempts",
            ["namespace", "job"],
            registry=self.registry,
        )

    def watch_jobs(self, source: JobsSource) -> None:
        self.jobs.source = source

    def serve(self, port: int, address: str = "0.0.0.0") -> Any:
        """Start the /metrics HTTP server in a background thread; returns the server."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return server


METRICS = OperatorMetrics()
