"""Prometheus metrics of one training process, labelled by FineTuneJob name (``job``) and global ``rank``.

Names follow the Prometheus naming guide: ``finetune_`` prefix, base units (seconds, bytes), ``_total`` for
counters. The training loop owns the numbers; this module only records and serves them::

    metrics = TrainingMetrics(job="sentiment", rank=rank, port=base_port + local_rank)
    metrics.start_server()
    metrics.set_total_steps(total)
    metrics.observe_step(step=s, epoch=e, loss=l, learning_rate=lr, grad_norm=g, samples=b, tokens=t, seconds=dt)

The caller reads ``FINETUNE_METRICS_PORT``; with several processes in one pod each serves on its own port
(base + local rank) and the pod names them ``metrics``, ``metrics-1``, ... so one PodMonitor scrapes them all.
GPU memory and utilization are read at scrape time when CUDA is available, and left out otherwise.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LABELS = ("job", "rank")
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CHECKPOINT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class TrainingMetrics:
    """Training metrics of one process, served over HTTP for Prometheus when a port is given.

    Args:
        job: FineTuneJob name, the ``job`` label of every series.
        rank: global rank of this process, the ``rank`` label.
        port: port for ``start_server``; None or 0 means no HTTP server.
        registry: where the metrics live; a fresh registry (with process and GC metrics) by default, so
            several instances in one process never clash.
        addr: address the HTTP server binds; by default ``FINETUNE_METRICS_ADDRESS`` or all interfaces (so
            Prometheus can reach a pod). Tests set it to 127.0.0.1.
    """

    def __init__(
        self,
        job: str,
        rank: int,
        port: int | None = None,
        registry: CollectorRegistry | None = None,
        *,
        addr: str | None = None,
    ) -> None:
        if not isinstance(job, str) or not job:
            raise ValueError(f"TrainingMetrics job: expected a non-empty FineTuneJob name, got {job!r}")
        if not isinstance(rank, int) or rank < 0:
            raise ValueError(f"TrainingMetrics rank: expected an integer >= 0, got {rank!r}")
        if port is not None and (not isinstance(port, int) or not 0 <= port <= 65535):
            raise ValueError(f"TrainingMetrics port: expected None or an integer in 0..65535, got {port!r}")
        self.job, self.rank, self.port = job, rank, port or None
        self.addr = addr or os.environ.get("FINETUNE_METRICS_ADDRESS") or "0.0.0.0"
        if registry is None:
            registry = CollectorRegistry()
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
        self.registry = registry
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._build()
        gpu = _CudaCollector.detect(job, str(rank))
        if gpu is not None:
            registry.register(gpu)

    def _build(self) -> None:
        values = (self.job, str(self.rank))
        reg = self.registry

        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, LABELS, registry=reg).labels(*values)

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, LABELS, registry=reg).labels(*values)

        self._loss = gauge("finetune_train_loss", "Training loss of the last step.")
        self._lr = gauge("finetune_train_learning_rate", "Learning rate of the last step.")
        self._grad_norm = gauge("finetune_train_grad_norm", "Gradient norm of the last step (before clipping).")
        self._samples_per_s = gauge("finetune_train_samples_per_second", "Samples per second of the last step.")
        self._tokens_per_s = gauge("finetune_train_tokens_per_second", "Tokens per second of the last step.")
        self._step = gauge("finetune_train_step", "Optimizer steps completed.")
        self._total_steps = gauge("finetune_train_total_steps", "Optimizer steps planned for the whole run.")
        self._epoch = gauge("finetune_train_epoch", "Fractional epoch reached.")
        self._progress_ts = gauge(
            "finetune_train_last_progress_timestamp_seconds",
            "Unix time of the last step, evaluation or checkpoint (process start before any).",
        )
        self._samples = counter("finetune_train_samples", "Training samples processed.")
        self._tokens = counter("finetune_train_tokens", "Training tokens processed (padding excluded).")
        self._step_seconds = Histogram(
            "finetune_train_step_duration_seconds",
            "Wall time of one optimizer step.",
            LABELS,
            buckets=STEP_BUCKETS,
            registry=reg,
        ).labels(*values)
        self._eval = Gauge(
            "finetune_eval_metric", "Last evaluation result, by metric name.", (*LABELS, "metric"), registry=reg
        )
        self._ckpt_seconds = Histogram(
            "finetune_checkpoint_save_duration_seconds",
            "Wall time of one checkpoint save, data and manifest.",
            LABELS,
            buckets=CHECKPOINT_BUCKETS,
            registry=reg,
        ).labels(*values)
        self._ckpt_bytes = counter("finetune_checkpoint_bytes", "Checkpoint bytes written by this process.")
        self._progress_ts.set(time.time())

    def start_server(self) -> int | None:
        """Serve /metrics on the configured port; returns the bound port, or None when no port was given."""
        if self.port is None:
            return None
        if self._server is None:
            self._server, self._thread = start_http_server(self.port, addr=self.addr, registry=self.registry)
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop the HTTP server, if one runs."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None

    def observe_step(
        self,
        *,
        step: int,
        epoch: float,
        loss: float,
        learning_rate: float,
        grad_norm: float | None,
        samples: int,
        tokens: int,
        seconds: float,
    ) -> None:
        """Record one optimizer step: ``samples`` and ``tokens`` processed by this rank in ``seconds``."""
        for name, value in (("step", step), ("samples", samples), ("tokens", tokens)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"observe_step {name}: expected an integer >= 0, got {value!r}")
        if not isinstance(seconds, int | float) or not seconds >= 0:
            raise ValueError(f"observe_step seconds: expected a duration >= 0, got {seconds!r}")
        # Loss may be NaN or inf: that is exactly what the divergence alert looks for, so record it as is.
        self._loss.set(float(loss))
        self._lr.set(float(learning_rate))
        if grad_norm is not None:
            self._grad_norm.set(float(grad_norm))
        self._step.set(step)
        self._epoch.set(float(epoch))
        self._samples.inc(samples)
        self._tokens.inc(tokens)
        self._step_seconds.observe(seconds)
        if seconds > 0:
            self._samples_per_s.set(samples / seconds)
            self._tokens_per_s.set(tokens / seconds)
        self._progress_ts.set(time.time())

    def observe_eval(self, metrics: Mapping[str, float]) -> None:
        """Record evaluation results, e.g. ``{"accuracy": 0.9, "f1_macro": 0.8, "loss": 0.3}``."""
        for name, value in metrics.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"observe_eval: metric names must be non-empty strings, got {name!r}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"observe_eval {name!r}: expected a number, got {value!r}")
            self._eval.labels(self.job, str(self.rank), name).set(float(value))
        self._progress_ts.set(time.time())

    def observe_checkpoint(self, *, seconds: float, nbytes: int) -> None:
        """Record one checkpoint save that took ``seconds`` and wrote ``nbytes`` from this process."""
        if not isinstance(seconds, int | float) or not seconds >= 0:
            raise ValueError(f"observe_checkpoint seconds: expected a duration >= 0, got {seconds!r}")
        if not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"observe_checkpoint nbytes: expected an integer >= 0, got {nbytes!r}")
        self._ckpt_seconds.observe(seconds)
        self._ckpt_bytes.inc(nbytes)
        self._progress_ts.set(time.time())

    def set_total_steps(self, total: int) -> None:
        """Record the number of optimizer steps the run will take (progress = step / total)."""
        if not isinstance(total, int) or total < 0:
            raise ValueError(f"set_total_steps total: expected an integer >= 0, got {total!r}")
        self._total_steps.set(total)

    def __enter__(self) -> TrainingMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _CudaCollector(Collector):
    """GPU memory (torch allocator) and utilization (NVML through torch) of this process's device."""

    def __init__(self, torch: Any, device: int, job: str, rank: str) -> None:
        self.torch, self.device, self.labels = torch, device, [job, rank, str(device)]

    @classmethod
    def detect(cls, job: str, rank: str) -> _CudaCollector | None:
        try:
            import torch
        except ImportError:
            return None
        if not torch.cuda.is_available():
            return None
        return cls(torch, torch.cuda.current_device(), job, rank)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        names = [*LABELS, "device"]
        cuda = self.torch.cuda
        used = GaugeMetricFamily(
            "finetune_gpu_memory_used_bytes", "GPU memory held by tensors of this process.", labels=names
        )
        used.add_metric(self.labels, float(cuda.memory_allocated(self.device)))
        total = GaugeMetricFamily("finetune_gpu_memory_total_bytes", "GPU memory of the device.", labels=names)
        total.add_metric(self.labels, float(cuda.get_device_properties(self.device).total_memory))
        yield used
        yield total
        try:
            percent = cuda.utilization(self.device)
        except Exception:  # NVML missing or unsupported (e.g. MIG): leave the series out, never fail a scrape.
            return
        if percent is not None and math.isfinite(percent) and percent >= 0:
            util = GaugeMetricFamily(
                "finetune_gpu_utilization_ratio",
                "Fraction of time the device was busy over the last sample period (NVML).",
                labels=names,
            )
            util.add_metric(self.labels, percent / 100.0)
            yield util
