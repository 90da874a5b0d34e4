"""The CRD is generated from api.py (drift test), and the admission checks name every wrong field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from finetune_operator import admission, api, crd
from finetune_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings()
SPEC = {
    "model": {"name": "bert-base-uncased"},
    "dataset": {"train": "s3://data/train.csv"},
    "checkpoint": {"storage": "s3://ckpt"},
}


def test_manifests_crd_is_generated_from_api() -> None:
    committed = (ROOT / "manifests" / "crd.yaml").read_text()
    assert committed == crd.crd_yaml(), "manifests/crd.yaml is stale: run `finetune crd > manifests/crd.yaml`"


def test_crd_has_status_subresource_printer_columns_short_name_and_categories() -> None:
    definition = crd.crd()
    names = definition["spec"]["names"]
    assert names["shortNames"] == ["ftj"] and "ml" in names["categories"]
    (version,) = definition["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Progress"] == ".status.progress.percent"
    assert columns["Accuracy"] == ".status.metrics.accuracy" and columns["Restarts"] == ".status.restarts"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_crd_schema_applies_defaults_and_rejects_what_it_can() -> None:
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    assert spec["properties"]["backoffLimit"]["default"] == 3
    assert spec["properties"]["resources"]["properties"]["nodes"]["minimum"] == 1
    good = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {}, "spec": SPEC}
    validator = jsonschema.Draft4Validator(schema)  # OpenAPI 3.0: boolean exclusiveMinimum, as draft 4
    validator.validate(good)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**good, "spec": {**SPEC, "resources": {"nodes": 0}}})


def test_admission_reports_every_spec_error_parse_spec_reports() -> None:
    bad = {**SPEC, "hyperparameters": {"learningRate": 2, "batchSize": 0}, "extra": 1}
    errors = admission.validate("sentiment", "ml", bad, SETTINGS)
    with pytest.raises(api.ConfigError) as parsed:
        api.parse_spec(bad)
    assert errors == parsed.value.errors
    assert "spec.hyperparameters.batchSize: expected a number of at least 1, got 0" in errors
    assert "spec.extra: expected no such field (check spelling and indentation)" in errors


def test_admission_rejects_what_the_cluster_cannot_run() -> None:
    errors = admission.validate("sentiment", "ml", {**SPEC, "checkpoint": {}}, SETTINGS)
    assert errors and errors[0].startswith("spec.checkpoint.storage: required on a cluster")
    assert admission.validate("sentiment", "ml", {**SPEC, "checkpoint": {}}, Settings(default_storage="s3://d")) == []
    assert admission.validate("sentiment", "ml", SPEC, SETTINGS) == []
    serving = {**SPEC, "serving": {"enabled": True, "repository": "s3://models"}}
    (error,) = admission.validate("sentiment", "ml", serving, SETTINGS)
    assert error.startswith("spec.serving.tritonUrl: required when serving.enabled is true")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", {"name": "roberta-base"}),
        ("dataset", {"train": "s3://data/other.csv"}),
        ("task", {"type": "regression"}),
        ("resources", {"nodes": 4}),
    ],
)
def test_admission_refuses_changes_to_immutable_fields_while_the_job_is_active(field: str, value: dict) -> None:
    new = {**SPEC, field: value}
    errors = admission.validate("sentiment", "ml", new, SETTINGS, old_spec=SPEC, phase="Running")
    assert any(e.startswith(f"spec.{field}: cannot change while the job is Running") for e in errors), errors
    assert admission.validate("sentiment", "ml", new, SETTINGS, old_spec=SPEC, phase="Succeeded") == []


def test_admission_allows_mutable_changes_while_running() -> None:
    new = {**SPEC, "suspend": True, "hyperparameters": {"learningRate": 1e-4}}
    assert admission.validate("sentiment", "ml", new, SETTINGS, old_spec=SPEC, phase="Running") == []


def test_importing_the_operator_loads_no_torch_or_transformers() -> None:
    code = (
        "import sys, finetune_operator, finetune_operator.handlers, finetune_operator.cluster, "
        "finetune_operator.lifecycle, finetune_operator.resources, finetune_operator.admission\n"
        "bad = sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_finetune_crd_check_detects_drift(tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(yaml.safe_dump({"kind": "CustomResourceDefinition"}))
    from finetune_operator.cli import main

    assert main(["crd", "--check", str(stale)]) == 1
    assert main(["crd", "--check", str(ROOT / "manifests" / "crd.yaml")]) == 0
