"""Alerts through promtool, and a real Prometheus scraping real trainers: every dashboard query about
training returns series."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from finetune_trainer.metrics import TrainingMetrics
from tests.fixtures.observability import DASHBOARD, ROOT, free_port, helm_template

RULES = ROOT / "manifests" / "monitoring" / "alerts.rules.yaml"
RULE_TESTS = Path(__file__).with_name("test_prometheus_rules.yaml")
TRAINER_METRIC = re.compile(r"\bfinetune_(train|eval|checkpoint|gpu)_")
OPERATOR_METRIC = re.compile(r"\bfinetune_operator_")
ALERTS = {
    "FineTuneJobFailed",
    "FineTuneJobNoProgress",
    "FineTuneJobStalled",
    "FineTuneJobRestarting",
    "FineTuneJobCheckpointStale",
    "FineTuneModelPublishFailed",
    "FineTuneLossNaN",
    "FineTuneLossDiverging",
}


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules(promtool_bin: str, helm_bin: str, tmp_path: Path) -> None:
    done = run(promtool_bin, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout
    # Non-default thresholds render to valid rules too.
    objs = helm_template(
        helm_bin,
        *("--set", "alerts.noProgressMinutes=45", "--set", "alerts.restartsWindow=2h30m"),
        *("--set-json", "alerts.lossDivergenceFactor=3.5", "--set", "alerts.severity=critical"),
    )
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
    custom = tmp_path / "rules.yaml"
    custom.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = run(promtool_bin, "check", "rules", str(custom))
    assert done.returncode == 0, done.stdout + done.stderr
    text = custom.read_text()
    assert "> 2700" in text and "[2h30m]" in text and "3.5 * min_over_time" in text


def test_promtool_unit_tests_fire_each_alert(promtool_bin: str) -> None:
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == ALERTS, f"alerts without a promtool test: {ALERTS - tested}"
    done = run(promtool_bin, "test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def panel_queries(pattern: re.Pattern, *, gpu: bool) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target matching ``pattern``, variables filled in as Grafana
    would with "All" selected."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            if not pattern.search(expr) or ("finetune_gpu_" in expr and not gpu):
                continue
            expr = expr.replace("$__rate_interval", "15s").replace("$namespace", ".*").replace("$job", ".*")
            out.append((panel["title"], expr))
    return out


def wait_for_series(prometheus, queries: list[tuple[str, str]], alive, timeout: float) -> set[str]:
    """Poll until every query returns a series (or ``alive()`` turns false); returns the queries still empty."""
    missing = {expr for _, expr in queries}
    deadline = time.monotonic() + timeout
    while missing and time.monotonic() < deadline and alive():
        missing = {expr for expr in missing if not prometheus.query(expr)}
        time.sleep(0.5)
    return missing


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
def test_prometheus_scrapes_training_metrics_for_every_panel(prometheus_server) -> None:
    port = free_port()
    metrics = TrainingMetrics(job="sentiment", rank=0, port=port, addr="127.0.0.1")
    metrics.start_server()
    metrics.set_total_steps(1000)
    stop = threading.Event()

    def train() -> None:
        step = 0
        while not stop.is_set():
            step += 1
            metrics.observe_step(
                step=step, epoch=step / 100, loss=1 / step, learning_rate=1e-4, grad_norm=0.5,
                samples=16, tokens=512, seconds=0.05,
            )  # fmt: skip
            if step % 10 == 0:
                metrics.observe_eval({"accuracy": 0.5 + step / 10000, "f1_macro": 0.5})
                metrics.observe_checkpoint(seconds=0.3, nbytes=1 << 20)
            stop.wait(0.05)

    worker = threading.Thread(target=train, daemon=True)
    worker.start()
    try:
        prometheus = prometheus_server([f"127.0.0.1:{port}"], labels={"namespace": "ml"}, rule_files=[RULES])
        queries = panel_queries(TRAINER_METRIC, gpu=has_gpu())
        assert len(queries) >= 12
        missing = wait_for_series(prometheus, queries, alive=lambda: True, timeout=40)
        assert not missing, f"dashboard queries with no series: {sorted(missing)}"

        # Labels survive the scrape (honor_labels), as the PodMonitor keeps them.
        (series,) = prometheus.query("finetune_train_total_steps")
        assert series["metric"]["job"] == "sentiment" and series["metric"]["rank"] == "0"
        assert series["metric"]["namespace"] == "ml" and series["value"][1] == "1000"
        # The alert rules load into a real Prometheus and evaluate without error.
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        assert set(rules) == ALERTS
        assert all(r["health"] in ("ok", "unknown") for r in rules.values()), rules
    finally:
        stop.set()
        worker.join(timeout=5)
        metrics.close()


@pytest.mark.slow
def test_prometheus_scrapes_a_real_two_process_training(
    prometheus_server, tiny_bert: Path, sentiment_csv: tuple[Path, Path], tmp_path: Path
) -> None:
    """torchrun with 2 ranks, each serving /metrics on its own port (base + local rank), as in a pod."""
    pytest.importorskip("finetune_trainer.loop", reason="the training loop is not written yet")
    train, val = sentiment_csv
    port = free_port()
    second = port + 1
    config = {
        "jobName": "sentiment",
        "namespace": "ml",
        "outputDir": str(tmp_path / "out"),
        "model": {"name": str(tiny_bert)},
        "dataset": {"train": str(train), "validation": str(val)},
        "hyperparameters": {
            "maxSteps": 400, "batchSize": 8, "learningRate": 1e-3, "logEverySteps": 1, "evalSteps": 10,
            "precision": "fp32",
        },
        "checkpoint": {"storage": str(tmp_path / "checkpoints"), "everySteps": 10},
        "metricsPort": port,
    }  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["FINETUNE_METRICS_ADDRESS"] = "127.0.0.1"
    log = (tmp_path / "torchrun.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "finetune_trainer", "train", "--config", str(tmp_path / "job.json")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        prometheus = prometheus_server([f"127.0.0.1:{port}", f"127.0.0.1:{second}"], labels={"namespace": "ml"})
        queries = panel_queries(TRAINER_METRIC, gpu=has_gpu())
        missing = wait_for_series(prometheus, queries, alive=lambda: proc.poll() is None, timeout=150)
        if proc.poll() is not None and missing:
            pytest.fail(f"training ended before every panel had data: {sorted(missing)}\n"
                        f"{(tmp_path / 'torchrun.log').read_text()[-3000:]}")  # fmt: skip
        assert not missing, f"dashboard queries with no series: {sorted(missing)}"
        ranks = {s["metric"]["rank"] for s in prometheus.query('finetune_train_step{job="sentiment"}')}
        assert ranks == {"0", "1"}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        log.close()


@pytest.mark.slow
def test_prometheus_scrapes_the_operator_for_every_operator_panel(prometheus_server) -> None:
    """The operator's metrics module, served as the operator serves it, feeds every operator panel."""
    operator_metrics = pytest.importorskip("finetune_operator.metrics", reason="operator metrics not written yet")
    from prometheus_client import CollectorRegistry

    metrics = operator_metrics.OperatorMetrics(CollectorRegistry())
    at = time.time() - 30  # the newest checkpoint of the running job: step 120, 30 s ago
    jobs = [("ml", "sentiment", "Running", False, 120, at), ("ml", "broken", "Failed"), ("ml", "old", "Succeeded")]
    metrics.watch_jobs(lambda: jobs)
    port = free_port()
    server = metrics.serve(port, "127.0.0.1")
    stop = threading.Event()

    def reconcile() -> None:
        while not stop.is_set():
            metrics.reconcile_duration.observe(0.02)
            metrics.publish_duration.observe(42)
            metrics.restarts.labels("ml", "sentiment").inc()
            metrics.publish_failures.labels("ml", "sentiment").inc()
            metrics.disruptions.labels("ml", "sentiment").inc()
            metrics.steps_redone.labels("ml", "sentiment").inc(7)
            stop.wait(0.2)

    worker = threading.Thread(target=reconcile, daemon=True)
    worker.start()
    try:
        prometheus = prometheus_server([f"127.0.0.1:{port}"])
        queries = panel_queries(OPERATOR_METRIC, gpu=False)
        missing = wait_for_series(prometheus, queries, alive=lambda: True, timeout=30)
        assert not missing, f"operator panels with no series: {sorted(missing)}"
        (saved,) = prometheus.query("finetune_operator_last_checkpoint_step")
        assert saved["metric"]["job"] == "sentiment" and saved["value"][1] == "120"
        (failed,) = prometheus.query('finetune_operator_jobs{phase="Failed"}')
        assert failed["metric"]["namespace"] == "ml" and failed["value"][1] == "1"
        # The operator's own namespace and job labels survive the scrape (honor_labels, as in the ServiceMonitor).
        info = prometheus.query("finetune_operator_job_info")
        assert {(s["metric"]["job"], s["metric"]["phase"]) for s in info} == {
            ("sentiment", "Running"),
            ("broken", "Failed"),
            ("old", "Succeeded"),
        }
    finally:
        stop.set()
        worker.join(timeout=5)
        server.shutdown()
        server.server_close()
