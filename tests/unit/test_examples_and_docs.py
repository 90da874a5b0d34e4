"""Every shipped example is a valid FineTuneJob for both the API models and the CRD schema, and the generated
field reference is current."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from finetune_operator import reference
from finetune_operator.api import load_job_file
from finetune_operator.crd import crd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path):
    job = load_job_file(path)
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # OpenAPI v3.0 schemas use draft-4 semantics (boolean exclusiveMinimum).
    jsonschema.Draft4Validator(schema).validate(yaml.safe_load(path.read_text()))
    assert job.metadata.name


def test_local_example_runs_offline():
    job = load_job_file(ROOT / "examples" / "finetunejob.yaml")
    assert job.spec.model.name.startswith("package://")
    assert all(s.startswith("package://") for s in (job.spec.dataset.train, job.spec.dataset.validation))


def test_reference_doc_is_current():
    current = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert current == reference.markdown(), "run: python -m finetune_operator.reference > docs/reference.md"
