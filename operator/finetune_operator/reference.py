"""docs/reference.md, generated from the API models so the field reference cannot drift from the code."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from finetune_operator.api import FineTuneJobSpec
from finetune_operator.status import FineTuneJobStatus

HEADER = """# FineTuneJob reference

`apiVersion: finetune.dev/v1alpha1`, `kind: FineTuneJob` (short name `ftj`). Generated from
`operator/finetune_operator/api.py` by `python -m finetune_operator.reference > docs/reference.md`; a test
fails when it is out of date. The same fields drive the CRD schema, `finetune run` and the operator.
"""


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = [a for a in get_args(annotation) if a is not type(None)]
    if origin is None:
        if isinstance(annotation, type) and issubclass(annotation, Enum):
            return " \\| ".join(f"`{m.value}`" for m in annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return "object"
        return getattr(annotation, "__name__", str(annotation))
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "map"
    if len(args) == 1:
        return _type_name(args[0])
    if str(origin).endswith("Annotated"):
        return _type_name(get_args(annotation)[0])
    return " or ".join(_type_name(a) for a in args)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, Enum):
        value = value.value
    if value in (None, [], {}):
        return ""
    return f"`{json.dumps(value)}`"


def _constraints(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        for key, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "min length")):
            if getattr(meta, key, None) is not None:
                parts.append(f"{sym} {getattr(meta, key)}")
        if getattr(meta, "pattern", None):
            parts.append(f"pattern `{meta.pattern}`")
    extra = field.json_schema_extra
    if isinstance(extra, dict) and extra.get("pattern"):
        parts.append(f"pattern `{extra['pattern']}`")
    return ", ".join(parts).replace("|", "\\|")  # a table cell: GitHub reads an escaped bar inside code


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _submodels(a)]


def _section(title: str, model: type[BaseModel], out: list[str], seen: set[type]) -> None:
    seen.add(model)
    doc = (model.__doc__ or "").strip().split("\n")[0]
    out += [f"## `{title}`", "", doc, "", "| field | type | default | constraints | description |",
            "|---|---|---|---|---|"]
    nested = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        desc = (field.description or "").replace("|", "\\|")
        subs = _submodels(field.annotation)
        if subs and not desc:
            first = ((subs[0].__doc__ or "").strip().splitlines() or [""])[0]
            desc = f"{first} See `{title}.{alias}`.".strip()
        out.append(
            f"| `{alias}` | {_type_name(field.annotation)} | {_default(field)} | {_constraints(field)} | {desc} |"
        )
        nested += [(f"{title}.{alias}", m) for m in subs if m not in seen]
    out.append("")
    for sub_title, sub in nested:
        if sub not in seen:
            _section(sub_title, sub, out, seen)


def markdown() -> str:
    out = [HEADER]
    seen: set[type] = set()
    _section("spec", FineTuneJobSpec, out, seen)
    _section("status", FineTuneJobStatus, out, seen)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
