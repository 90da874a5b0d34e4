"""The Grafana dashboard: valid against Grafana's own dashboard schema, every query parses, every metric exists."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import promql_parser
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from finetune_trainer.metrics import TrainingMetrics
from tests.fixtures.observability import DASHBOARD

# Operator metric names the operator exports (finetune_operator.metrics); trainer names are read from
# TrainingMetrics itself.
OPERATOR_METRICS = {
    "finetune_operator_jobs",
    "finetune_operator_job_info",
    "finetune_operator_reconcile_duration_seconds_bucket",
    "finetune_operator_restarts_total",
    "finetune_operator_publish_duration_seconds_bucket",
    "finetune_operator_publish_failures_total",
    "finetune_operator_disruptions_total",
    "finetune_operator_steps_redone_total",
    "finetune_operator_last_checkpoint_step",
    "finetune_operator_last_checkpoint_timestamp_seconds",
}
GPU_METRICS = {"finetune_gpu_memory_used_bytes", "finetune_gpu_memory_total_bytes", "finetune_gpu_utilization_ratio"}
VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*", "$job": ".*"}


def strip_nulls(value: Any) -> Any:
    """Grafana's schema types have no nulls; exported dashboards do (drop them as Grafana's loader does)."""
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value]
    return value


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def targets() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def fill(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown dashboard variable in {expr!r}"
    return expr


def test_dashboard_validates_against_grafana_schema(grafana_dashboard_schema: dict) -> None:
    jsonschema.validate(strip_nulls(dashboard()), grafana_dashboard_schema)


def test_schema_catches_a_broken_dashboard(grafana_dashboard_schema: dict) -> None:
    broken = dashboard()
    broken["panels"][1]["gridPos"] = {"h": 8, "w": 8}  # x and y missing
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, grafana_dashboard_schema)


def test_layout_is_sane() -> None:
    d = dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    names = [v["name"] for v in d["templating"]["list"]]
    assert names == ["datasource", "namespace", "job"]


@pytest.mark.parametrize(("title", "expr"), targets(), ids=[f"{t}:{i}" for i, (t, _) in enumerate(targets())])
def test_every_query_parses(title: str, expr: str) -> None:
    try:
        promql_parser.parse(fill(expr))
    except Exception as e:  # the parser raises a plain ValueError/RuntimeError with the position
        pytest.fail(f"panel {title!r}: {expr!r} does not parse: {e}")


def exposed_trainer_metrics() -> set[str]:
    m = TrainingMetrics(job="j", rank=0, registry=CollectorRegistry())
    m.observe_step(step=1, epoch=0, loss=1, learning_rate=1, grad_norm=1, samples=1, tokens=1, seconds=1)
    m.observe_eval({"accuracy": 1.0})
    m.observe_checkpoint(seconds=1, nbytes=1)
    text = generate_latest(m.registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_metric_a_panel_uses_exists() -> None:
    known = exposed_trainer_metrics() | OPERATOR_METRICS | GPU_METRICS
    used = set()
    for title, expr in targets():
        names = set(re.findall(r"\b(finetune_[a-z_]+)\b", expr))
        assert names, f"panel {title!r} queries no finetune_ metric"
        assert names <= known, f"panel {title!r} uses unknown metrics {sorted(names - known)}"
        used |= names
    # Every trainer series the issue names is on the dashboard.
    for name in ("finetune_train_loss", "finetune_train_learning_rate", "finetune_train_grad_norm",
                 "finetune_train_samples_total", "finetune_train_tokens_total", "finetune_train_step",
                 "finetune_train_total_steps", "finetune_train_epoch", "finetune_eval_metric",
                 "finetune_checkpoint_bytes_total", "finetune_train_step_duration_seconds_bucket",
                 "finetune_checkpoint_save_duration_seconds_bucket"):  # fmt: skip
        assert name in used, f"{name} is on no panel"
    assert used >= OPERATOR_METRICS and used >= GPU_METRICS
