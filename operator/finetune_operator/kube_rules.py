"""The API server's rules for names, labels, annotations, env entries and quantities, checked up front.

A FineTuneJob whose template breaks one of them would be admitted and then every pod create would get 422,
leaving the job with no phase. Each check raises ValueError with the ``expected ..., got ...`` wording of
the other spec errors (the caller's field path is prepended by ``finetune_trainer.config.format_errors``).
"""

from __future__ import annotations

import re
from typing import Any

# resource.Quantity: a decimal number with an optional binary (Ki..Ei), decimal (n..E) or exponent suffix.
QUANTITY_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_ENV_NAME = re.compile(r"^[!-<>-~]+$")  # printable ASCII but '=' (the API server's relaxed rule)


def quantity(value: str | None) -> str | None:
    """A resource.Quantity such as 2, 500m, 8Gi or 1e3."""
    if value is not None and not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"expected a quantity such as 2, 500m, 1.5 or 8Gi, got {value!r}")
    return value


def dns_subdomain(name: str) -> str:
    """An object name such as a ServiceAccount's or a Secret's (RFC 1123 subdomain)."""
    if not (len(name) <= 253 and _DNS_SUBDOMAIN.match(name)):
        raise ValueError(
            f"expected a lowercase RFC 1123 name (a-z, 0-9, '-', '.'; at most 253 characters), got {name!r}"
        )
    return name


def qualified_name(key: str) -> str:
    """A label or annotation key: ``[prefix/]name``, prefix a DNS subdomain, name at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    ok = len(name) <= 63 and bool(_NAME_PART.match(name))
    if prefix:
        ok = ok and len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.match(prefix))
    if not ok:
        raise ValueError(
            f"expected keys of the form [prefix/]name (name: at most 63 of A-Z, a-z, 0-9, '-', '_', '.', starting "
            f"and ending alphanumeric; prefix: a DNS subdomain), got {key!r}"
        )
    return key


def label_value(value: str) -> str:
    if value and not (len(value) <= 63 and _NAME_PART.match(value)):
        raise ValueError(
            "expected label values of at most 63 of A-Z, a-z, 0-9, '-', '_', '.', starting and ending "
            f"alphanumeric, got {value!r}"
        )
    return value


def labels(mapping: dict[str, str]) -> dict[str, str]:
    for key, value in mapping.items():
        qualified_name(key)
        label_value(value)
    return mapping


def annotations(mapping: dict[str, str]) -> dict[str, str]:
    for key in mapping:
        qualified_name(key)
    return mapping


def env(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """core/v1 EnvVar entries: a name, and a value or a valueFrom, not both."""
    for i, entry in enumerate(entries):
        name = entry.get("name")
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"expected entry {i} to have a name (printable characters, no '='), got {name!r}")
        if "value" in entry and "valueFrom" in entry:
            raise ValueError(f"expected entry {i} ({name}) to have value or valueFrom, not both")
        unknown = set(entry) - {"name", "value", "valueFrom"}
        if unknown:
            raise ValueError(f"expected entry {i} ({name}) to have only name, value, valueFrom, got {sorted(unknown)}")
    return entries
