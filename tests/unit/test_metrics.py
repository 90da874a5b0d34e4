"""TrainingMetrics: names, labels and values as Prometheus reads them over HTTP."""

from __future__ import annotations

import math
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from finetune_trainer.metrics import TrainingMetrics
from tests.fixtures.processes import free_port


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    """Every exposed sample keyed by (name, labels), parsed back from the text format."""
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    want = frozenset({"job": "sentiment", "rank": "1", **labels}.items())
    return samples(registry)[(name, want)]


@pytest.fixture
def metrics() -> TrainingMetrics:
    return TrainingMetrics(job="sentiment", rank=1, registry=CollectorRegistry())


def test_step_records_every_training_series(metrics: TrainingMetrics) -> None:
    metrics.set_total_steps(100)
    metrics.observe_step(
        step=1, epoch=0.01, loss=0.69, learning_rate=5e-5, grad_norm=1.5, samples=16, tokens=800, seconds=0.5
    )
    metrics.observe_step(
        step=2, epoch=0.02, loss=0.6, learning_rate=4e-5, grad_norm=None, samples=16, tokens=600, seconds=0.25
    )
    reg = metrics.registry
    assert value(reg, "finetune_train_loss") == pytest.approx(0.6)
    assert value(reg, "finetune_train_learning_rate") == pytest.approx(4e-5)
    assert value(reg, "finetune_train_grad_norm") == pytest.approx(1.5)  # None keeps the last known norm
    assert value(reg, "finetune_train_step") == 2
    assert value(reg, "finetune_train_total_steps") == 100
    assert value(reg, "finetune_train_epoch") == pytest.approx(0.02)
    assert value(reg, "finetune_train_samples_total") == 32
    assert value(reg, "finetune_train_tokens_total") == 1400
    assert value(reg, "finetune_train_samples_per_second") == pytest.approx(64)
    assert value(reg, "finetune_train_tokens_per_second") == pytest.approx(2400)
    assert value(reg, "finetune_train_step_duration_seconds_count") == 2
    assert value(reg, "finetune_train_step_duration_seconds_sum") == pytest.approx(0.75)
    assert value(reg, "finetune_train_step_duration_seconds_bucket", le="0.25") == 1
    assert value(reg, "finetune_train_step_duration_seconds_bucket", le="0.5") == 2
    assert time.time() - value(reg, "finetune_train_last_progress_timestamp_seconds") < 60


def test_eval_and_checkpoint(metrics: TrainingMetrics) -> None:
    metrics.observe_eval({"accuracy": 0.9, "f1_macro": 0.8, "loss": 0.3})
    metrics.observe_checkpoint(seconds=2.0, nbytes=1000)
    metrics.observe_checkpoint(seconds=3.0, nbytes=24)
    reg = metrics.registry
    assert value(reg, "finetune_eval_metric", metric="accuracy") == pytest.approx(0.9)
    assert value(reg, "finetune_eval_metric", metric="f1_macro") == pytest.approx(0.8)
    assert value(reg, "finetune_eval_metric", metric="loss") == pytest.approx(0.3)
    assert value(reg, "finetune_checkpoint_bytes_total") == 1024
    assert value(reg, "finetune_checkpoint_save_duration_seconds_count") == 2
    assert value(reg, "finetune_checkpoint_save_duration_seconds_sum") == pytest.approx(5.0)


def test_nan_loss_is_exposed_for_the_alert(metrics: TrainingMetrics) -> None:
    metrics.observe_step(
        step=3, epoch=0.1, loss=math.nan, learning_rate=1e-4, grad_norm=math.inf, samples=8, tokens=8, seconds=0
    )
    assert math.isnan(value(metrics.registry, "finetune_train_loss"))
    assert value(metrics.registry, "finetune_train_grad_norm") == math.inf
    # A zero-length step has no meaningful throughput: the gauges keep their previous value.
    assert value(metrics.registry, "finetune_train_samples_per_second") == 0


def test_names_follow_prometheus_conventions(metrics: TrainingMetrics) -> None:
    names = {name for name, _ in samples(metrics.registry)}
    ours = {n for n in names if n.startswith("finetune_")}
    assert ours, "no finetune_ series exposed"
    for name in ours:
        assert name.startswith(("finetune_train_", "finetune_eval_", "finetune_checkpoint_", "finetune_gpu_"))
    assert "finetune_train_samples_total" in ours and "finetune_checkpoint_bytes_total" in ours
    assert not any(n.endswith(("_ms", "_milliseconds", "_kb", "_mb")) for n in ours)


def test_two_instances_in_one_process_do_not_clash() -> None:
    a = TrainingMetrics(job="a", rank=0)
    b = TrainingMetrics(job="a", rank=1)
    a.set_total_steps(1)
    b.set_total_steps(2)
    assert value(b.registry, "finetune_train_total_steps", job="a") == 2
    assert any(name == "process_cpu_seconds_total" for name, _ in samples(a.registry))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda m: m.observe_step(
                step=-1, epoch=0, loss=1, learning_rate=1, grad_norm=1, samples=1, tokens=1, seconds=1
            ),
            "observe_step step",
        ),
        (
            lambda m: m.observe_step(
                step=1, epoch=0, loss=1, learning_rate=1, grad_norm=1, samples=1, tokens=1, seconds=-2
            ),
            "observe_step seconds",
        ),
        (lambda m: m.observe_eval({"accuracy": "high"}), "observe_eval 'accuracy'"),
        (lambda m: m.observe_checkpoint(seconds=1, nbytes=-5), "observe_checkpoint nbytes"),
        (lambda m: m.set_total_steps(1.5), "set_total_steps total"),
    ],
)
def test_bad_values_name_the_field(metrics: TrainingMetrics, call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(metrics)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="job"):
        TrainingMetrics(job="", rank=0)
    with pytest.raises(ValueError, match="rank"):
        TrainingMetrics(job="j", rank=-1)
    with pytest.raises(ValueError, match="port"):
        TrainingMetrics(job="j", rank=0, port=70000)


def test_server_serves_metrics_over_http() -> None:
    port = free_port()
    with TrainingMetrics(job="sentiment", rank=1, port=port, addr="127.0.0.1") as metrics:
        assert metrics.start_server() == port
        assert metrics.start_server() == port  # idempotent
        metrics.observe_step(
            step=7, epoch=0.5, loss=0.4, learning_rate=1e-5, grad_norm=0.3, samples=4, tokens=40, seconds=0.1
        )
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'finetune_train_step{job="sentiment",rank="1"} 7.0' in body
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


@pytest.mark.parametrize("port", [None, 0])
def test_no_port_means_no_server(port: int | None) -> None:
    assert TrainingMetrics(job="j", rank=0, port=port).start_server() is None


def test_gpu_series_only_where_a_gpu_is(metrics: TrainingMetrics) -> None:
    import torch

    names = {name for name, _ in samples(metrics.registry)}
    if torch.cuda.is_available():
        assert value(metrics.registry, "finetune_gpu_memory_total_bytes", device=str(torch.cuda.current_device())) > 0
        assert "finetune_gpu_memory_used_bytes" in names
    else:
        assert not any(n.startswith("finetune_gpu_") for n in names)
