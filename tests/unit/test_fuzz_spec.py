"""Property-based fuzzing of FineTuneJob specs through the three layers a spec meets on a cluster: the CRD schema
(what the API server checks: jsonschema Draft4Validator on the CRD's openAPIV3Schema, OpenAPI v3.0 semantics),
the validating handler (admission.validate) and the pure builders (resources.py, lifecycle.reconcile).

- Specs generated from the CRD schema itself: the schema accepts each (else the generator or the schema is
  wrong); admission either accepts it, and then every builder runs, renders valid Kubernetes objects and pods
  that meet the restricted Pod Security Standard, or rejects it with messages that each name a real field.
- The same specs with one field broken (out of range, wrong type, bad enum or pattern, empty, missing,
  misspelt): rejected, and every rejection names that field.

FINETUNE_FUZZ_EXAMPLES sets the cases per property (default 1500); the counts are printed (`pytest -s`).
"""

from __future__ import annotations

import copy
import os
import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune_operator import admission, api, crd, lifecycle, resources
from finetune_operator.decision import JobMeta
from finetune_operator.observed import Observed
from finetune_operator.settings import Settings
from finetune_trainer.config import TrainerConfig
from tests.unit.pss import job_pods, restricted_violations

EXAMPLES = int(os.environ.get("FINETUNE_FUZZ_EXAMPLES") or 1500)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
SETTINGS = Settings(trainer_image="registry.example/trainer:1", default_storage="s3://default/checkpoints")
UID = "6f1d2c3b-0000-4000-8000-000000000001"
NAMESPACE = "ml"
K8S = kubernetes_validate.latest_version()
K8S_CHECKED = 150  # admitted specs whose objects are also checked against Kubernetes' schema
CRD_SCHEMA = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC_SCHEMA = CRD_SCHEMA["properties"]["spec"]


# --- the CRD schema as the API server applies it ------------------------------------------------------------


def draft4(schema: Any) -> Any:
    """OpenAPI v3.0 -> JSON Schema draft 4: ``nullable: true`` becomes a null member of the type."""
    if isinstance(schema, list):
        return [draft4(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: draft4(v) for k, v in schema.items()}
    if out.pop("nullable", False):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


CRD_VALIDATOR = jsonschema.Draft4Validator(draft4(SPEC_SCHEMA))


def crd_errors(spec: Any) -> list[str]:
    """The fields the CRD schema rejects, as ``spec.a.b[0]`` paths (a missing field: its own path)."""
    paths = []
    for error in CRD_VALIDATOR.iter_errors(spec):
        path = _path(["spec", *error.absolute_path])
        if error.validator == "required":
            path += "." + re.match(r"'([^']+)'", error.message).group(1)
        paths.append(path)
    return paths


def _path(parts: list[Any]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(parts))


def schema_at(path: str) -> dict | None:
    """The schema of ``spec.a.b[0].c`` (None when no such field exists)."""
    node: dict | None = SPEC_SCHEMA
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path.removeprefix("spec")):
        name, index = part
        if node is None:
            return None
        if index:
            node = node.get("items")
        elif "properties" in node:
            node = node["properties"].get(name)
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return node


def names_a_field(message: str) -> bool:
    """``spec.a.b: ...`` with a path that exists, ``metadata.name: ...``, or ``spec: ...`` whose text names a
    field by its path (``task.numLabels is 2 but dataset.labelNames has 3 names``)."""
    path, _, text = message.partition(": ")
    if path == "metadata.name":
        return True
    if path == "spec":
        dotted = re.findall(r"\b[a-z][A-Za-z0-9]*(?:\.[a-z][A-Za-z0-9]*)+", text)
        return any(schema_at(f"spec.{d}") is not None for d in dotted)
    return path.startswith("spec") and schema_at(path) is not None


# --- valid specs, generated from the schema -----------------------------------------------------------------

DNS = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,14}[a-z0-9])?", fullmatch=True)
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?"
LABEL_KEY = st.from_regex(rf"([a-z0-9]([-a-z0-9]{{0,8}}[a-z0-9])?\.)?[a-z]{{1,3}}/{LABEL_NAME}", fullmatch=True) | DNS
LABEL_VALUE = st.from_regex(rf"({LABEL_NAME})?", fullmatch=True)
QUANTITY = st.from_regex(r"[1-9][0-9]{0,2}(m|Mi|Gi|k|M|G)?", fullmatch=True)
WORDS = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=16)
URIS = st.one_of(WORDS, st.builds("s3://{}/{}".format, DNS, DNS), st.builds("/data/{}.csv".format, DNS))
ENV_NAME = st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True).filter(lambda n: not n.startswith("FINETUNE_"))

# Free-form fields: what the schema leaves open (preserve-unknown-fields, names the API server checks itself).
OVERRIDES: dict[str, st.SearchStrategy] = {
    "spec.hyperparameters.classWeights": st.one_of(
        st.sampled_from(["none", "balanced"]), st.lists(st.floats(0.01, 100), min_size=1, max_size=4)
    ),
    "spec.template.affinity": st.none() | st.just({"podAntiAffinity": {}}),
    "spec.template.env[]": st.fixed_dictionaries({"name": ENV_NAME, "value": WORDS}),
    "spec.template.labels": st.dictionaries(LABEL_KEY, LABEL_VALUE, max_size=3),
    "spec.template.nodeSelector": st.dictionaries(LABEL_KEY, LABEL_VALUE, max_size=3),
    "spec.template.annotations": st.dictionaries(LABEL_KEY, WORDS, max_size=3),
    "spec.template.imagePullSecrets[]": DNS,
    "spec.template.serviceAccountName": st.none() | DNS,
    "spec.template.priorityClassName": st.none() | DNS,
    "spec.template.image": st.none() | st.builds("registry.example/{}:{}".format, DNS, DNS),
    "spec.template.tolerations[].key": st.none() | LABEL_KEY,
    "spec.template.tolerations[].value": st.none() | LABEL_VALUE,
    "spec.checkpoint.s3.credentialsSecret": st.none() | DNS,
    "spec.serving.s3.credentialsSecret": st.none() | DNS,
    # Mostly small groups (every rank's pod is built and checked), now and then the largest.
    "spec.resources.nodes": st.integers(1, 3) | st.just(1024),
    "spec.resources.cpu": st.none() | QUANTITY,
    "spec.resources.memory": st.none() | QUANTITY,
    "spec.resources.shmSize": st.none() | QUANTITY,
    "spec.model.name": URIS,
    "spec.dataset.train": URIS,
    "spec.checkpoint.storage": st.none() | URIS,
    "spec.serving.repository": st.none() | URIS,
    "spec.output": st.none() | URIS,
}


def _bounds(schema: dict, default_low: float, span: float) -> tuple[float, float, bool, bool]:
    low, high = schema.get("minimum"), schema.get("maximum")
    low = default_low if low is None else low
    high = low + span if high is None else high
    return low, high, bool(schema.get("exclusiveMinimum")), bool(schema.get("exclusiveMaximum"))


def _pattern(schema: dict) -> st.SearchStrategy:
    # Anchors as RE2 reads them (Kubernetes' and pydantic's engines): "$" is the end of the text, no newline.
    return st.from_regex(schema["pattern"].removeprefix("^").removesuffix("$"), fullmatch=True)


def values(schema: dict, path: str) -> st.SearchStrategy:
    """Values the schema at ``path`` accepts."""
    if path in OVERRIDES:
        return OVERRIDES[path]
    base = _values(schema, path)
    return st.none() | base if schema.get("nullable") else base


def _values(schema: dict, path: str) -> st.SearchStrategy:
    kind = schema.get("type")
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if kind == "object" and "properties" in schema:
        props = {k: values(v, f"{path}.{k}") for k, v in schema["properties"].items()}
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: s for k, s in props.items() if k in required},
            optional={k: s for k, s in props.items() if k not in required},
        )
    if kind == "object":
        return st.dictionaries(DNS, values(schema.get("additionalProperties") or {"type": "string"}, f"{path}{{}}"),
                               max_size=2)  # fmt: skip
    if kind == "array":
        return st.lists(values(schema["items"], f"{path}[]"), min_size=schema.get("minItems", 0), max_size=3)
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low, high, xlow, xhigh = _bounds(schema, -1000, 10**6)
        return st.integers(int(low) + xlow, int(high) - xhigh)
    if kind == "number":
        low, high, xlow, xhigh = _bounds(schema, -1000.0, 1e6)
        return st.floats(low, high, exclude_min=xlow, exclude_max=xhigh, allow_nan=False, allow_infinity=False)
    if kind == "string":
        if "pattern" in schema:
            return _pattern(schema)
        return st.text(min_size=schema.get("minLength", 0), max_size=12)
    raise AssertionError(f"{path}: no generator for schema {schema}")


SPECS = values(SPEC_SCHEMA, "spec")
JOB_NAMES = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?", fullmatch=True)


def build_everything(name: str, spec: dict) -> list[dict]:
    """Every child the builders make for an admitted spec; the phase machine's first step too."""
    job = api.parse_job({"metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec})
    children = resources.worker_group(job, UID, 1, SETTINGS)
    if job.spec.serving.enabled:
        children.append(resources.export_job(job, UID, 1, SETTINGS))
    TrainerConfig.model_validate_json(children[0]["data"]["trainer.json"])
    decision = lifecycle.reconcile(JobMeta(name, NAMESPACE, UID), spec, {}, Observed(),
                                   datetime.now(UTC), SETTINGS)  # fmt: skip
    assert decision.status["phase"] in (lifecycle.PENDING, lifecycle.SUSPENDED), decision.status
    return children


def test_generated_specs_pass_the_schema_and_are_built_or_rejected_by_field() -> None:
    counts: Counter[str] = Counter()

    @FUZZ
    @given(name=JOB_NAMES, spec=SPECS)
    def check(name: str, spec: dict) -> None:
        counts["cases"] += 1
        assert crd_errors(spec) == [], f"the CRD rejects a spec generated from it: {crd_errors(spec)}"
        errors = admission.validate(name, NAMESPACE, copy.deepcopy(spec), SETTINGS)
        if errors:
            counts["rejected"] += 1
            unnamed = [e for e in errors if not names_a_field(e)]
            assert not unnamed, f"rejections that name no field: {unnamed}"
            return
        counts["accepted"] += 1
        # Kubernetes' own schema (about 10 ms a check) for the first cases.
        k8s_check = counts["accepted"] <= K8S_CHECKED
        children = build_everything(name, spec)
        for child in children:
            if k8s_check:
                kubernetes_validate.validate(child, K8S, strict=True)
                counts["k8s_validated"] += 1
        for child in job_pods(children):
            if child["kind"] == "Pod":
                counts["pods"] += 1
                violations = restricted_violations(child["spec"], child["metadata"].get("annotations"))
                assert not violations, f"{child['metadata']['name']} breaks the restricted PSS: {violations}"
                for c in child["spec"].get("initContainers", []) + child["spec"]["containers"]:
                    for env in c["env"]:
                        if env["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                            assert "value" not in env and "secretKeyRef" in env["valueFrom"], env

    check()
    print(f"\nfuzz valid-by-schema specs: {dict(counts)}")
    assert counts["accepted"] >= EXAMPLES // 10, f"too few admitted specs to exercise the builders: {dict(counts)}"
    assert counts["rejected"] >= 1


# --- invalid specs: one field broken ------------------------------------------------------------------------


def _leaves(schema: dict, path: str) -> list[tuple[str, dict]]:
    """Every (path, schema) a mutation can break: scalars and lists, first list element for lists of objects."""
    out = []
    for name, sub in (schema.get("properties") or {}).items():
        sub_path = f"{path}.{name}"
        if sub.get("type") == "object" and "properties" in sub:
            out += _leaves(sub, sub_path)
        elif sub.get("type") == "array" and "properties" in (sub.get("items") or {}):
            out += _leaves(sub["items"], f"{sub_path}[0]")
        elif sub.get("type") or "enum" in sub:
            out.append((sub_path, sub))
    return out


LEAVES = _leaves(SPEC_SCHEMA, "spec")


def breakers(schema: dict) -> list[tuple[str, Any]]:
    """(what, value) pairs that the schema must reject, and that are not coerced into valid values either."""
    kind = schema.get("type")
    out: list[tuple[str, Any]] = []
    if kind != "object":
        out.append(("a mapping", {"x": 1}))
    elif isinstance(schema.get("additionalProperties"), dict):
        out.append(("a mapping to a non-text value", {"x": {"y": 1}}))
    if kind != "array":
        out.append(("a list", [1]))
    if kind in ("integer", "number"):
        out.append(("text", "many"))
        if "minimum" in schema:
            low = schema["minimum"]
            out.append(("below the minimum", low if schema.get("exclusiveMinimum") else low - 1))
        if "maximum" in schema:
            high = schema["maximum"]
            out.append(("above the maximum", high if schema.get("exclusiveMaximum") else high + 1))
        if kind == "integer":
            out.append(("a fraction", 1.5))
    if kind == "string":
        out.append(("a number", 12.5))
        if "enum" in schema:
            out.append(("an unknown choice", "no-such-choice"))
        if "pattern" in schema:
            out.append(("a pattern mismatch", "!! not valid !!"))
        if schema.get("minLength"):
            out.append(("empty", ""))
    if kind == "boolean":
        out.append(("a number", 7))
    if kind == "array":
        out.append(("a scalar", 3.5))
    return out


def _set(spec: dict, path: str, value: Any) -> None:
    """Set ``spec.a.b[0].c`` to ``value``, creating the objects and list items on the way."""
    parts: list[Any] = [int(i) if i else n for n, i in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path.removeprefix("spec"))]
    node: Any = spec
    for key, following in zip(parts, [*parts[1:], None], strict=True):
        if following is None:
            break
        kind = list if isinstance(following, int) else dict
        if isinstance(node, list):
            while len(node) <= key:
                node.append(kind())
        if not isinstance(node[key] if isinstance(node, list) else node.get(key), kind):
            node[key] = kind()
        node = node[key]
    if isinstance(node, list):
        while len(node) <= parts[-1]:
            node.append({})
    node[parts[-1]] = value


BREAKS = [(path, what, value) for path, schema in LEAVES for what, value in breakers(schema)]


def _fill_parents(draw: st.DrawFn, spec: dict, path: str) -> None:
    """Give each object on the way to ``path`` that the spec lacks a generated valid value, so that an optional
    section with required fields (dataset.augmentation.backTranslation) breaks only at ``path``."""
    node, walked = spec, "spec"
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path.removeprefix("spec"))[:-1]:
        if index:  # a list item (ensemble.members[0]): the items up to it, each a valid one
            if not isinstance(node, list):
                return
            walked = f"{walked}[{index}]"
            while len(node) <= int(index):
                node.append(draw(_values(schema_at(walked), walked)))
            node = node[int(index)]
            continue
        if not isinstance(node, dict):
            return
        walked = f"{walked}.{name}"
        if not isinstance(node.get(name), dict | list):
            node[name] = draw(_values(schema_at(walked), walked))
        node = node[name]


@st.composite
def broken_specs(draw: st.DrawFn) -> tuple[dict, str, str]:
    spec = copy.deepcopy(draw(SPECS))
    path, what, value = draw(st.sampled_from(BREAKS))
    _fill_parents(draw, spec, path)
    _set(spec, path, copy.deepcopy(value))
    return spec, path, what


@st.composite
def misspelt_or_missing(draw: st.DrawFn) -> tuple[dict, str, str]:
    spec = copy.deepcopy(draw(SPECS))
    kind = draw(st.sampled_from(["misspelt", "missing"]))
    if kind == "missing":
        path = draw(st.sampled_from(["spec.model", "spec.dataset", "spec.model.name", "spec.dataset.train"]))
        section, _, field = path.removeprefix("spec.").partition(".")
        if field:
            spec[section].pop(field, None)
        else:
            spec.pop(section, None)
        return spec, path, kind
    objects = ["spec", "spec.model", "spec.dataset", "spec.task", "spec.hyperparameters", "spec.resources",
               "spec.checkpoint", "spec.serving", "spec.template"]  # fmt: skip
    parent = draw(st.sampled_from(objects))
    real = schema_at(parent)["properties"]
    typo = draw(st.sampled_from(sorted(real))).lower() + "s"
    if typo in real:
        typo += "x"
    if parent == "spec":
        spec[typo] = 1
    else:
        section = parent.removeprefix("spec.")
        if not isinstance(spec.get(section), dict):
            spec[section] = {}
        spec[section][typo] = 1
    return spec, f"{parent}.{typo}", kind


def _names(message: str, path: str) -> bool:
    return message.split(": ", 1)[0] == path or message.startswith(f"{path}.") or message.startswith(f"{path}[")


def test_one_broken_field_is_rejected_and_named() -> None:
    counts: Counter[str] = Counter()

    @FUZZ
    @given(case=st.one_of(broken_specs(), broken_specs(), misspelt_or_missing()), name=JOB_NAMES)
    def check(case: tuple[dict, str, str], name: str) -> None:
        spec, path, what = case
        counts["cases"] += 1
        counts[what] += 1
        schema_paths = crd_errors(spec)
        errors = admission.validate(name, NAMESPACE, copy.deepcopy(spec), SETTINGS)
        assert schema_paths or errors, f"{path} = {what}: accepted by the CRD schema and the handler"
        # The schema reports only the broken field (every other field was generated valid).
        assert all(p == path or p.startswith(f"{path}.") for p in schema_paths), (path, what, schema_paths)
        if what == "misspelt":
            counts["handler_only"] += 1  # the API server prunes unknown fields; the handler names them
        if errors:
            assert any(_names(e, path) for e in errors), f"{path} = {what}: no message names it: {errors}"
        else:
            counts["schema_only"] += 1  # e.g. a bool for a number: pydantic coerces it, the API server rejects it

    check()
    print(f"\nfuzz one-broken-field specs: {dict(counts)}")
    assert counts["cases"] >= EXAMPLES


# --- values the API server would refuse in a pod: rejected up front, named ---------------------------------

REFUSED_IN_PODS = {
    "spec.template.labels": {"labels": {"bad key!": "x"}},
    "spec.template.annotations": {"annotations": {"bad key!": "x"}},
    "spec.template.nodeSelector": {"nodeSelector": {"disk": "not a label value!"}},
    "spec.template.serviceAccountName": {"serviceAccountName": "Not_A_Name"},
    "spec.template.imagePullSecrets": {"imagePullSecrets": [""]},
    "spec.template.env": {"env": [{"value": "an entry without a name"}]},
    "spec.resources.cpu": {"cpu": "..."},
}


@pytest.mark.parametrize("path", sorted(REFUSED_IN_PODS))
def test_values_the_api_server_refuses_in_a_pod_are_rejected_up_front(path: str) -> None:
    """Admitted, such a job would get 422 on every pod create and show no phase."""
    section = "resources" if path.startswith("spec.resources") else "template"
    spec = {"model": {"name": "m"}, "dataset": {"train": "t.csv"}, section: REFUSED_IN_PODS[path]}
    errors = admission.validate("job", NAMESPACE, spec, SETTINGS)
    assert any(_names(e, path) for e in errors), errors
