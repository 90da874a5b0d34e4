"""The small pieces around the phase machine: settings, metrics, status patches, the kopf command line."""

from __future__ import annotations

import argparse

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from finetune_operator import confirm
from finetune_operator.__main__ import add_arguments, kopf_argv
from finetune_operator.controller import status_patch
from finetune_operator.metrics import OperatorMetrics, phases_of
from finetune_operator.settings import Settings, SettingsError
from tests.fixtures.processes import free_port


def test_settings_read_the_environment_with_defaults() -> None:
    s = Settings.from_env({"FINETUNE_NAMESPACES": "a, b", "FINETUNE_POLL_SECONDS": "2.5", "AWS_REGION": "eu",
                           "FINETUNE_S3_ENDPOINT_URL": "http://s3", "HOME": "/root"})  # fmt: skip
    assert s.namespaces == ("a", "b") and s.poll_seconds == 2.5 and s.metrics_port == 9090
    assert s.trainer_metrics_port == 9400 and s.peering is None and s.webhook_port == 0
    assert s.s3_env == {"AWS_REGION": "eu", "FINETUNE_S3_ENDPOINT_URL": "http://s3"}
    assert Settings.from_env({"FINETUNE_NAMESPACE": "ml"}).namespaces == ("ml",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FINETUNE_POLL_SECONDS": "soon"}, "FINETUNE_POLL_SECONDS='soon': expected a number"),
        ({"FINETUNE_METRICS_PORT": "70000"}, "FINETUNE_METRICS_PORT='70000': expected an integer between 0 and 65535"),
        ({"FINETUNE_BACKOFF_SECONDS": "-1"}, "FINETUNE_BACKOFF_SECONDS='-1': expected a number of at least 0"),
        ({"FINETUNE_WEBHOOK_CERT": "c.pem"}, "FINETUNE_WEBHOOK_CERT and FINETUNE_WEBHOOK_KEY must be set together"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as e:
        Settings.from_env(env)
    assert str(e.value) == message


def test_jobs_by_phase_are_counted_at_scrape_time() -> None:
    metrics = OperatorMetrics(CollectorRegistry())
    index = {"ml": [("a", "Running"), ("b", "Running"), ("c", None)], "other": [("d", "Failed")]}
    metrics.watch_jobs(lambda: phases_of(index))
    text = generate_latest(metrics.registry).decode()
    assert 'finetune_operator_jobs{namespace="ml",phase="Running"} 2.0' in text
    assert 'finetune_operator_jobs{namespace="ml",phase="Pending"} 1.0' in text
    assert 'finetune_operator_jobs{namespace="ml",phase="Failed"} 0.0' in text
    assert 'finetune_operator_job_info{job="d",namespace="other",phase="Failed"} 1.0' in text
    index["ml"] = [("a", "Succeeded")]
    text = generate_latest(metrics.registry).decode()
    assert 'finetune_operator_jobs{namespace="ml",phase="Running"} 0.0' in text
    metrics.restarts.labels("ml", "a").inc()
    metrics.publish_failures.labels("ml", "a").inc()
    text = generate_latest(metrics.registry).decode()
    assert 'finetune_operator_restarts_total{job="a",namespace="ml"} 1.0' in text
    assert 'finetune_operator_publish_failures_total{job="a",namespace="ml"} 1.0' in text
    assert "finetune_operator_reconcile_duration_seconds_bucket" in text
    assert "finetune_operator_publish_duration_seconds_bucket" in text


def test_status_patch_sends_changes_and_nulls_removed_fields() -> None:
    old = {"phase": "Restarting", "retryAfter": "t", "restarts": 1}
    new = {"phase": "Running", "restarts": 1}
    assert status_patch(old, new) == {"phase": "Running", "retryAfter": None}
    assert status_patch(new, new) == {}


def test_kopf_command_line_follows_arguments_and_settings() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = kopf_argv(parser.parse_args([]), ("ml",), None)
    assert argv[:3] == ["run", "-m", "finetune_operator.handlers"]
    assert "--standalone" in argv and "--namespace=ml" in argv
    argv = kopf_argv(parser.parse_args(["-A"]), ("ml",), "finetune")
    assert "--all-namespaces" in argv and "--peering=finetune" in argv and "--standalone" not in argv


def test_confirm_reports_an_unreachable_triton_as_not_ready() -> None:
    served = confirm.confirm(f"http://127.0.0.1:{free_port()}", "sentiment", timeout=2)
    assert not served.ready and served.message
    assert not confirm.confirm(None, "sentiment").ready


def test_peering_replicas_take_distinct_priorities_unless_one_is_configured() -> None:
    from finetune_operator import peering

    settings = Settings.from_env({"FINETUNE_PEERING": "ops"})
    assert (settings.peering_priority, settings.peering_lifetime) == (None, 60)
    drawn = {peering.priority(settings) for _ in range(20)}
    assert len(drawn) == 20 and min(drawn) >= 1  # equal priorities would pause every replica
    fixed = Settings.from_env({"FINETUNE_PEERING": "ops", "FINETUNE_PEERING_PRIORITY": "7",
                               "FINETUNE_PEERING_LIFETIME": "15"})  # fmt: skip
    assert (peering.priority(fixed), fixed.peering_lifetime) == (7, 15)
    with pytest.raises(SettingsError, match="FINETUNE_PEERING_PRIORITY"):
        Settings.from_env({"FINETUNE_PEERING_PRIORITY": "0"})
