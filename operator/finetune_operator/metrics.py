"""The operator's own Prometheus metrics, served on FINETUNE_METRICS_PORT (default 9090).

- ``finetune_operator_jobs{namespace,phase}``: jobs by phase, computed at scrape time from kopf's in-memory
  index of FineTuneJobs (a custom Collector: no counter to keep in step by hand).
- ``finetune_operator_reconcile_duration_seconds``: time of one reconcile of one job.
- ``finetune_operator_restarts_total{namespace,job}``: worker-group restarts (failures and disruptions).
- ``finetune_operator_disruptions_total{namespace,job}``: of which after an eviction, a drain or a lost node.
- ``finetune_operator_steps_redone_total{namespace,job}``: steps trained again after restarts.
- ``finetune_operator_job_stalled{namespace,job}``: 1 while the Stalled condition is True.
- ``finetune_operator_last_checkpoint_step`` and ``_timestamp_seconds{namespace,job}``: the newest checkpoint.
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

JobsSource = Callable[[], Iterable[tuple[Any, ...]]]


def phases_of(index: Mapping[Any, Iterable[Any]]) -> Iterable[tuple[Any, ...]]:
    """(namespace, job, phase, ...) of each job in a kopf index keyed by namespace with (job, phase[, stalled[,
    last checkpoint step, its Unix time]]) values."""
    for namespace, values in list(index.items()):
        for name, phase, *rest in list(values):
            yield (str(namespace), str(name), str(phase or "Pending"), *rest)


def _sample(t: tuple[Any, ...]) -> tuple[str, str, str, bool, Any, Any]:
    """(namespace, job, phase, stalled, checkpoint step, checkpoint time) from what a source gives; a (namespace,
    phase) pair counts a job whose name is not known."""
    if len(t) == 2:
        return (t[0], "", t[1], False, None, None)
    namespace, name, phase, *rest = t
    rest += [False, None, None]
    return (namespace, name, phase, bool(rest[0]), rest[1], rest[2])


class JobsCollector(Collector):
    """Per-job gauges computed at scrape time from kopf's index of FineTuneJobs: finetune_operator_jobs
    {namespace,phase} (every known phase reported), finetune_operator_job_info{namespace,job,phase} (1 per job),
    finetune_operator_job_stalled, and the last checkpoint's step and time."""

    def __init__(self) -> None:
        self.source: JobsSource | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        samples = [_sample(t) for t in (self.source() if self.source else ())]
        labels = ["namespace", "job"]
        stalled = GaugeMetricFamily("finetune_operator_job_stalled", "1 while a job's Stalled condition is True",
                                    labels=labels)  # fmt: skip
        step = GaugeMetricFamily("finetune_operator_last_checkpoint_step",
                                 "Step of the newest committed checkpoint of a job", labels=labels)  # fmt: skip
        when = GaugeMetricFamily("finetune_operator_last_checkpoint_timestamp_seconds",
                                 "When a job's newest checkpoint was committed (Unix time)", labels=labels)  # fmt: skip
        for ns, name, _, is_stalled, ckpt_step, ckpt_time in samples:
            if is_stalled:
                stalled.add_metric([ns, name], 1)
            if ckpt_step is not None:
                step.add_metric([ns, name], ckpt_step)
            if ckpt_time is not None:
                when.add_metric([ns, name], ckpt_time)
        family = GaugeMetricFamily("finetune_operator_jobs", "FineTuneJobs by phase", labels=["namespace", "phase"])
        counts = Tally((t[0], t[2]) for t in samples)
        for ns in sorted({t[0] for t in samples}):
            for phase in PHASES:
                family.add_metric([ns, phase], counts.get((ns, phase), 0))
        yield family
        info = GaugeMetricFamily(
            "finetune_operator_job_info",
            "One series per FineTuneJob with its phase",
            labels=["namespace", "job", "phase"],
        )
        for ns, name, phase, *_ in sorted(samples, key=lambda t: t[:3]):
            if name:
                info.add_metric([ns, name, phase], 1)
        yield info
        yield stalled
        yield step
        yield when


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
        self.disruptions = Counter(
            "finetune_operator_disruptions",
            "Worker-group restarts after an eviction, a drain or a lost node (not spent against backoffLimit)",
            ["namespace", "job"],
            registry=self.registry,
        )
        self.steps_redone = Counter(
            "finetune_operator_steps_redone",
            "Optimizer steps trained again after restarts (the steps past the checkpoint each restart resumed from)",
            ["namespace", "job"],
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
