"""kopf routing only: each handler calls one function elsewhere.

kopf run -m finetune_operator.handlers --standalone --all-namespaces     # or: python -m finetune_operator
"""

from __future__ import annotations

from typing import Any

import kopf

from finetune_operator import admission, api, observed, settings, startup
from finetune_operator.controller import Controller
from finetune_operator.metrics import METRICS
from finetune_operator.names import APP, JOB_LABEL, NAME_LABEL
from finetune_operator.status import parse_time

SETTINGS = settings.current()
CONTROLLER = Controller(SETTINGS)
JOBS = {"group": api.GROUP, "version": api.VERSION, "plural": api.PLURAL}
CHILDREN = {"labels": {NAME_LABEL: APP, JOB_LABEL: kopf.PRESENT}}
CHILD_JOBS = {"group": "batch", "version": "v1", "plural": "jobs", **CHILDREN}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, jobs_by_namespace: kopf.Index, **_: Any) -> None:
    """Apply every kopf setting and start the /metrics server."""
    startup.configure(settings, SETTINGS)
    startup.serve_metrics(METRICS, SETTINGS, jobs_by_namespace)


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    """Close the API session."""
    await CONTROLLER.close()


@kopf.index(**JOBS)
async def jobs_by_namespace(namespace: str, name: str, status: kopf.Status, **_: Any) -> dict:
    """Jobs, their phases, whether they are stalled and their newest checkpoint, by namespace, for the metrics."""
    stalled = any(c.get("type") == "Stalled" and c.get("status") == "True" for c in status.get("conditions") or [])
    checkpoint = status.get("lastCheckpoint") or {}
    when = parse_time(checkpoint.get("time"))
    return {namespace: (name, status.get("phase"), stalled, checkpoint.get("step"),
                        when.timestamp() if when else None)}  # fmt: skip


@kopf.index("pods", **CHILDREN)
async def pods_by_job(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    """Each FineTuneJob's pods, summarised, by (namespace, FineTuneJob)."""
    return {(namespace, labels[JOB_LABEL]): observed.pod_view(dict(body))}


@kopf.index(**CHILD_JOBS)
async def jobs_by_job(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    """Each FineTuneJob's batch/v1 Jobs (worker groups, export tries), summarised, by (namespace, FineTuneJob)."""
    return {(namespace, labels[JOB_LABEL]): observed.job_view(dict(body))}


@kopf.on.event("pods", **CHILDREN)
async def pod_changed(namespace: str, labels: kopf.Labels, **_: Any) -> None:
    """A child pod changed: reconcile its job now."""
    CONTROLLER.wake(namespace, labels[JOB_LABEL])


@kopf.on.event(**CHILD_JOBS)
async def child_job_changed(namespace: str, labels: kopf.Labels, **_: Any) -> None:
    """A child Job changed (admitted, suspended, failed, complete): reconcile its FineTuneJob now."""
    CONTROLLER.wake(namespace, labels[JOB_LABEL])


@kopf.on.event(**JOBS)
async def job_changed(namespace: str, name: str, meta: kopf.Meta, **_: Any) -> None:
    """A job's spec changed (suspend, resume, edits): reconcile it now."""
    CONTROLLER.job_changed(namespace, name, int(meta.get("generation") or 0), bool(meta.get("deletionTimestamp")))


@kopf.daemon(**JOBS, cancellation_timeout=2.0)
async def reconcile(body: kopf.Body, pods_by_job: kopf.Index, jobs_by_job: kopf.Index, stopped: kopf.DaemonStopped,
                    **_: Any) -> None:  # fmt: skip
    """One reconcile loop per job for as long as it exists."""
    await CONTROLLER.run(body, pods_by_job, jobs_by_job, stopped)


@kopf.on.delete(**JOBS)
async def delete_children(namespace: str, name: str, **_: Any) -> None:
    """The job is being deleted: delete its Jobs, config maps and service before the finalizer goes."""
    await CONTROLLER.cleanup(namespace, name)


if SETTINGS.webhook_port:

    @kopf.on.validate(**JOBS, id="validate", operations=["CREATE", "UPDATE"])
    def validate(name: str, namespace: str, spec: kopf.Spec, old: Any, **_: Any) -> None:
        """Reject specs the schema cannot judge, with messages naming each field."""
        old = old or {}
        errors = admission.validate(
            name,
            namespace,
            dict(spec),
            SETTINGS,
            old_spec=old.get("spec"),
            phase=(old.get("status") or {}).get("phase"),
        )
        if errors:
            raise kopf.AdmissionError("; ".join(errors), code=422)
