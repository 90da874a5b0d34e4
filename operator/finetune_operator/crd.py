"""The CustomResourceDefinition of FineTuneJob, generated from the spec models (api.py) and the status model
(status.py): both become structural OpenAPI v3 schemas, so the API server prunes and validates spec and status."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from finetune_operator import admission, api
from finetune_operator.api import FineTuneJobSpec
from finetune_operator.status import FineTuneJobStatus
from finetune_trainer.config import Section

_DROP = {"title", "additionalProperties", "discriminator", "$defs"}


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Convert a pydantic JSON Schema into a Kubernetes structural OpenAPI v3 schema."""
    if "$ref" in schema:
        target = defs[schema["$ref"].split("/")[-1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in schema.items() if k != "$ref"}}
        return _structural(merged, defs)
    out: dict[str, Any] = {}
    any_of = schema.get("anyOf")
    if any_of is not None:
        members = [m for m in any_of if m.get("type") != "null"]
        nullable = len(members) < len(any_of)
        if len(members) == 1:
            out = _structural({**members[0], **{k: v for k, v in schema.items() if k != "anyOf"}}, defs)
        else:
            # A union of shapes (e.g. "balanced" or [1.0, 2.0]): leave it to the validating webhook.
            out = {"x-kubernetes-preserve-unknown-fields": True}
            if "description" in schema:
                out["description"] = schema["description"]
        if nullable:
            out["nullable"] = True
            if out.get("default", 0) is None:
                out.pop("default")
        return out
    for key, value in schema.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if schema.get("type") == "object" and "properties" not in schema:
        if isinstance(schema.get("additionalProperties"), dict) and schema["additionalProperties"]:
            out["additionalProperties"] = _structural(schema["additionalProperties"], defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if "type" not in out and "enum" in out:
        out["type"] = "string"
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("default", 0) is None:
        out.pop("default")
    return out


def openapi_schema(model: type[Section]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


# What the children's names need of the job's name, checked by the API server before the job is stored:
# ``<name>-workers`` is a Service (a DNS-1035 label) and ``<name>-workers-<rank>`` a pod hostname (63 at most).
_NODES = "(has(self.spec.resources) && has(self.spec.resources.nodes) ? self.spec.resources.nodes : 1)"
NAME_RULES = [
    {
        "rule": "self.metadata.name.matches('^[a-z]')",
        "message": "metadata.name must start with a lowercase letter: the workers' Service <name>-workers is a "
        "DNS-1035 label",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": f"size(self.metadata.name) + size('-workers-') + size(string({_NODES} - 1)) <= 63",
        "message": "metadata.name is too long for spec.resources.nodes: the pod hostname <name>-workers-<rank> "
        "must be at most 63 characters",
        "reason": "FieldValueInvalid",
    },
]



def immutable_rules() -> list[dict[str, str]]:
    """Transition rules: the sections a running job was started from cannot change while it is active (checked
    by the API server on every update, webhook or not)."""
    active = "[" + ", ".join(f"'{phase}'" for phase in admission.ACTIVE) + "]"
    was_active = f"has(oldSelf.status) && has(oldSelf.status.phase) && oldSelf.status.phase in {active}"
    rules = []
    for section in admission.IMMUTABLE_WHILE_ACTIVE:
        same = (f"(has(self.spec.{section}) ? has(oldSelf.spec.{section}) && self.spec.{section} == "
                f"oldSelf.spec.{section} : !has(oldSelf.spec.{section}))")  # fmt: skip
        rules.append({
            "rule": f"!({was_active}) || {same}",
            "messageExpression": f"'spec.{section}: cannot change while the job is ' + oldSelf.status.phase + "
            "'; delete the job and create it again, or wait until it finishes'",
            "reason": "FieldValueForbidden",
        })  # fmt: skip
    return rules


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition of FineTuneJob, generated from the models above."""
    spec = openapi_schema(FineTuneJobSpec)
    status = openapi_schema(FineTuneJobStatus)
    columns = [
        ("Phase", "string", ".status.phase", "Where the job is in its lifecycle"),
        ("Progress", "number", ".status.progress.percent", "Percent of training steps done"),
        ("Accuracy", "number", ".status.metrics.accuracy", "Latest evaluation accuracy"),
        ("Restarts", "integer", ".status.restarts", "Worker-group restarts"),
        ("Model", "string", ".status.model.name", "Published model"),
        ("Reason", "string", ".status.reason", "Why the job is in its phase"),
        ("Age", "date", ".metadata.creationTimestamp", ""),
        ("Message", "string", ".status.message", "What the operator last said about the job", 1),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}", "labels": {"app.kubernetes.io/name": "finetune-operator"}},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": api.CATEGORIES,
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": n, "type": t, "jsonPath": p, **({"description": d} if d else {}),
                         **({"priority": wide[0]} if wide else {})}
                        for n, t, p, d, *wide in columns
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A fine-tuning job: data to a trained, exported and served model.",
                            "required": ["spec"],
                            "x-kubernetes-validations": NAME_RULES + immutable_rules(),
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    return (
        "# Generated from operator/finetune_operator/api.py and status.py by `finetune crd`. Do not edit.\n"
        + yaml.safe_dump(crd(), sort_keys=False, width=120)
    )
