"""A configuration that cannot be used, said one line per wrong field by its path in the spec
(``spec.hyperparameters.learningRate: expected a number less than 1, got 5``)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from finetune_trainer.errors import InputError

M = TypeVar("M", bound=BaseModel)


class ConfigError(InputError):
    """A configuration that cannot be used; ``errors`` lists one message per wrong field."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


def _describe(err: dict[str, Any]) -> str:
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    expected = {
        "missing": "a value (field is required)",
        "extra_forbidden": "no such field (check spelling and indentation)",
        "greater_than": f"a number greater than {ctx.get('gt')}",
        "greater_than_equal": f"a number of at least {ctx.get('ge')}",
        "less_than": f"a number less than {ctx.get('lt')}",
        "less_than_equal": f"a number of at most {ctx.get('le')}",
        "string_too_short": "a non-empty string",
        "enum": f"one of {ctx.get('expected')}",
        "literal_error": f"one of {ctx.get('expected')}",
        "string_pattern_mismatch": f"a string matching {ctx.get('pattern')}",
        "int_parsing": "an integer",
        "int_type": "an integer",
        "int_from_float": "an integer",
        "float_parsing": "a number",
        "float_type": "a number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "model_type": "a mapping of fields",
        "dict_type": "a mapping",
    }.get(kind)
    if expected is None:
        return err["msg"].removeprefix("Value error, ")
    if kind in ("missing", "extra_forbidden"):
        return f"expected {expected}"
    return f"expected {expected}, got {got!r}"


def format_errors(exc: ValidationError, prefix: str = "spec") -> list[str]:
    """Turn a pydantic error into one line per field: ``spec.hyperparameters.learningRate: expected ...``."""
    lines = []
    for err in exc.errors():
        # Union members add their type name to the location ("list[...]", "ClassWeighting"): drop those.
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p[:1].isupper()))]
        path = prefix
        for part in loc:
            path = f"{path}[{part}]" if part.isdigit() else (f"{path}.{part}" if path else part)
        line = f"{path or '<root>'}: {_describe(err)}"
        if line not in lines:
            lines.append(line)
    return lines


def parse(model: type[M], raw: Any, prefix: str = "spec") -> M:
    """Validate ``raw`` into ``model``, raising ConfigError that names every wrong field by its path."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e, prefix)) from None
