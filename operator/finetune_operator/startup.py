"""Every kopf setting of the operator, in one place, applied by the startup handler."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from finetune_operator import peering
from finetune_operator.metrics import OperatorMetrics, phases_of
from finetune_operator.settings import ANNOTATION_PREFIX, FINALIZER, Settings

log = logging.getLogger("finetune_operator")


def configure(kopf_settings: kopf.OperatorSettings, settings: Settings) -> None:
    """Finalizer, progress storage, posting, watching and peering of this operator."""
    kopf_settings.persistence.finalizer = FINALIZER
    # Handler progress and the last-handled spec live in annotations: the status belongs to the phase machine.
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Named namespaces need no cluster-wide scans of CRDs and namespaces, which a namespaced Role refuses
    # (kopf would retry them for about a minute at every start before serving jobs).
    kopf_settings.scanning.disabled = bool(settings.namespaces)
    # botocore's debug request dumps carry the S3 access key id: never log them, whatever the verbosity.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    kopf_settings.posting.level = logging.INFO
    kopf_settings.posting.reporting_component = "finetune-operator"
    kopf_settings.watching.server_timeout = settings.watch_timeout_seconds
    kopf_settings.watching.client_timeout = settings.watch_timeout_seconds + 60
    kopf_settings.watching.connect_timeout = 30
    kopf_settings.networking.request_timeout = 60
    kopf_settings.background.cancellation_polling = 5
    if settings.peering:
        kopf_settings.peering.name = settings.peering
        kopf_settings.peering.standalone = False
        kopf_settings.peering.mandatory = True
        kopf_settings.peering.clusterwide = not settings.namespaces
        kopf_settings.peering.priority = peering.priority(settings)
        kopf_settings.peering.lifetime = settings.peering_lifetime
        peering.ensure_objects(settings)
        log.info("peering %r with priority %d", settings.peering, kopf_settings.peering.priority)
    else:
        kopf_settings.peering.standalone = True
    if settings.webhook_port:
        kopf_settings.admission.server = kopf.WebhookServer(
            addr=settings.webhook_address,
            port=settings.webhook_port,
            host=settings.webhook_host,
            certfile=settings.webhook_cert,
            pkeyfile=settings.webhook_key,
            insecure=not settings.webhook_cert,
        )


def serve_metrics(metrics: OperatorMetrics, settings: Settings, jobs_index: Mapping[Any, Any]) -> None:
    """Count jobs from kopf's index at scrape time and serve /metrics (FINETUNE_METRICS_PORT; 0 disables)."""
    metrics.watch_jobs(lambda: phases_of(jobs_index))
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.metrics_address)
        log.info("operator metrics on %s:%d/metrics", settings.metrics_address, settings.metrics_port)
