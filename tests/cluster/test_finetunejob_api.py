"""The FineTuneJob API as the real kube-apiserver serves it from manifests/crd.yaml: schema validation with field
paths, defaulting, server-side apply of the shipped examples, and the `kubectl get ftj` columns."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import ROOT, get_json
from tests.fixtures.kube import KubeApi

pytestmark = pytest.mark.slow
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def example(name: str = "finetunejob.yaml") -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / name).read_text())


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``obj`` with the dotted ``path`` set to ``value`` (or removed when ``value`` is ...)."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("spec.hyperparameters.learningRate", "fast", "expected numeric (int or float), got string"),
        ("spec.hyperparameters.maxSteps", 0, "should be greater than or equal to 1"),
        ("spec.task.type", "regress", "Unsupported value"),
        ("spec.model", ..., "Required value"),
    ],
)
def test_api_server_rejects_invalid_job_naming_the_field(ftj_api: KubeApi, path: str, value: Any, expected: str):
    job = _set(example(), path, value)
    result = ftj_api.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(job), check=False)
    assert result.returncode != 0
    assert path in result.stderr and expected in result.stderr, result.stderr
    assert get_json(ftj_api, "ftj")["items"] == []


def columns(header: str, row: str) -> dict[str, str]:
    """A `kubectl get` row by column name (columns start where their header does; empty cells stay empty)."""
    starts = [header.index(name) for name in header.split()]
    ends = [*starts[1:], None]
    return {name: row[a:b].strip() for name, a, b in zip(header.split(), starts, ends, strict=True)}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_apply_server_side_and_get_defaults(ftj_api: KubeApi, path: Path):
    applied = yaml.safe_load(path.read_text())
    out = ftj_api.kubectl("apply", "--server-side", "-f", str(path))
    name = applied["metadata"]["name"]
    assert f"finetunejob.finetune.dev/{name} serverside-applied" in out.stdout
    stored = get_json(ftj_api, "ftj", name, "--show-managed-fields")
    assert stored["spec"]["model"]["name"] == applied["spec"]["model"]["name"]
    # Fields the example leaves out come back with the CRD's defaults, filled in by the API server.
    assert "weightDecay" not in applied["spec"].get("hyperparameters", {})
    assert stored["spec"]["hyperparameters"]["weightDecay"] == 0.01
    managers = {m["manager"] for m in stored["metadata"]["managedFields"]}
    assert "kubectl" in managers


def test_get_ftj_prints_status_columns(ftj_api: KubeApi):
    ftj_api.kubectl("apply", "--server-side", "-f", str(ROOT / "examples" / "finetunejob.yaml"))
    status = {"phase": "Running", "progress": {"percent": 42.5}, "metrics": {"accuracy": 0.91}, "restarts": 1}
    ftj_api.kubectl("patch", "ftj", "yahoo-topics-minilm", "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))  # fmt: skip
    status |= {"reason": "Running", "message": "2 worker pod(s) of attempt 2 running"}
    ftj_api.kubectl("patch", "ftj", "yahoo-topics-minilm", "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))  # fmt: skip
    header, row = ftj_api.kubectl("get", "ftj").stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "ACCURACY", "RESTARTS", "MODEL", "REASON", "AGE"]
    assert row.split()[:5] == ["yahoo-topics-minilm", "Running", "42.5", "0.91", "1"]
    assert columns(header, row)["REASON"] == "Running" and columns(header, row)["MODEL"] == ""
    wide_header, wide_row = ftj_api.kubectl("get", "ftj", "-o", "wide").stdout.splitlines()
    assert wide_header.split()[-1] == "MESSAGE" and wide_row.endswith("2 worker pod(s) of attempt 2 running")
    assert "yahoo-topics-minilm" in ftj_api.kubectl("get", "ml").stdout


def test_status_schema_refuses_what_the_operator_never_writes(ftj_api: KubeApi):
    """The typed status schema is enforced by the API server: an unknown phase is refused, not stored."""
    ftj_api.kubectl("apply", "--server-side", "-f", str(ROOT / "examples" / "finetunejob.yaml"))
    result = ftj_api.kubectl("patch", "ftj", "yahoo-topics-minilm", "--subresource=status", "--type=merge",
                             "-p", json.dumps({"status": {"phase": "Training"}}), check=False)  # fmt: skip
    assert result.returncode != 0
    assert 'status.phase: Unsupported value: "Training"' in result.stderr


@pytest.mark.parametrize(
    ("name", "nodes", "expected"),
    [
        ("2024-bert", 1, "metadata.name must start with a lowercase letter"),
        ("a" * 54, 1, "metadata.name is too long for spec.resources.nodes"),
        ("a" * 53, 11, "metadata.name is too long for spec.resources.nodes"),
    ],
)
def test_api_server_refuses_names_its_children_could_not_have(ftj_api: KubeApi, name: str, nodes: int,
                                                              expected: str):  # fmt: skip
    job = example()
    job["metadata"]["name"] = name
    job["spec"].setdefault("resources", {})["nodes"] = nodes
    result = ftj_api.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(job), check=False)
    assert result.returncode != 0 and expected in result.stderr, result.stderr
    assert get_json(ftj_api, "ftj")["items"] == []
    job["metadata"]["name"] = "a" * (63 - len("-workers-") - len(str(nodes - 1)))  # the longest name that fits
    ftj_api.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(job))


@pytest.mark.parametrize(("phase", "refused"), [("Running", True), ("Suspended", True), ("Succeeded", False)])
def test_api_server_keeps_an_active_jobs_inputs_unchanged(ftj_api: KubeApi, phase: str, refused: bool):
    """CEL transition rules in the CRD: what the workers were started from cannot change under them."""
    ftj_api.kubectl("apply", "--server-side", "-f", str(ROOT / "examples" / "finetunejob.yaml"))
    ftj_api.kubectl("patch", "ftj", "yahoo-topics-minilm", "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"phase": phase}}))  # fmt: skip
    edit = {"spec": {"resources": {"nodes": 4}}}
    result = ftj_api.kubectl("patch", "ftj", "yahoo-topics-minilm", "--type=merge", "-p", json.dumps(edit),
                             check=False)  # fmt: skip
    if refused:
        assert result.returncode != 0, result.stdout
        assert f"spec.resources: cannot change while the job is {phase}" in result.stderr, result.stderr
    else:
        assert result.returncode == 0, result.stderr
    # Fields outside the started inputs (suspend, the serving target) may always change.
    ftj_api.kubectl("patch", "ftj", "yahoo-topics-minilm", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    stored = get_json(ftj_api, "ftj", "yahoo-topics-minilm")["spec"]
    assert stored["suspend"] is True and (stored["resources"].get("nodes") == 4) != refused
