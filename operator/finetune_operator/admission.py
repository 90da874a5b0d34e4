"""Validation of FineTuneJobs beyond the CRD schema, for the validating admission webhook.

It reports every error api.py's models find (the same messages `finetune submit` and `finetune run` print),
what the cluster cannot run (names too long for pod hostnames, no checkpoint storage), and changes to fields
that cannot change while the job is active.
"""

from __future__ import annotations

from typing import Any

from finetune_operator import api, lifecycle, resources
from finetune_operator.settings import Settings
from finetune_trainer.config import ConfigError

IMMUTABLE_WHILE_ACTIVE = ("model", "dataset", "task", "resources")
ACTIVE = (lifecycle.PENDING, lifecycle.RUNNING, lifecycle.RESTARTING, lifecycle.EXPORTING, lifecycle.PUBLISHING,
          lifecycle.SUSPENDED)  # fmt: skip


def _parse(name: str, namespace: str, spec: Any) -> tuple[api.FineTuneJob | None, list[str]]:
    try:
        return api.parse_job({"metadata": {"name": name, "namespace": namespace}, "spec": spec}), []
    except ConfigError as e:
        return None, list(e.errors)


def validate(name: str, namespace: str, spec: Any, settings: Settings, *, old_spec: Any = None,
             phase: str | None = None) -> list[str]:  # fmt: skip
    """Every reason to reject this create or update, one message per field; empty when it is fine.

    Args:
        spec: the new spec; old_spec and phase: the stored object's spec and status.phase on update.
    """
    job, errors = _parse(name, namespace, spec)
    if job is not None:
        errors += resources.spec_errors(job, settings)
    if old_spec is None or phase not in ACTIVE or not isinstance(spec, dict):
        return errors
    old_job, _ = _parse(name, namespace, old_spec)
    for section in IMMUTABLE_WHILE_ACTIVE:
        if job is not None and old_job is not None:
            changed = getattr(job.spec, section) != getattr(old_job.spec, section)
        else:
            changed = spec.get(section) != (old_spec or {}).get(section)
        if changed:
            errors.append(
                f"spec.{section}: cannot change while the job is {phase}; delete the job and create it again, "
                "or wait until it finishes"
            )
    return errors
