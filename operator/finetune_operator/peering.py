"""Several operator replicas, one active: kopf's peering, made to work out of the box.

kopf keeps each replica's heartbeat in a peering object and pauses every replica that sees a live peer of higher
*or equal* priority, so replicas must differ in priority and the object must exist before they start (kopf
patches it and never creates it). Each replica takes a random priority unless FINETUNE_PEERING_PRIORITY names
one, and creates the peering object where it is missing: a KopfPeering in each watched namespace, or one
ClusterKopfPeering for a cluster-wide operator. The chart installs the two CRDs when ``peering.enabled``.
"""

from __future__ import annotations

import logging
import secrets

from finetune_operator.kube import new_client
from finetune_operator.settings import Settings

log = logging.getLogger("finetune_operator")
GROUP, VERSION = "kopf.dev", "v1"


def priority(settings: Settings) -> int:
    """This replica's peering priority: the configured one, else a random one (ties would pause everyone)."""
    return settings.peering_priority if settings.peering_priority is not None else 1 + secrets.randbelow(2**31 - 2)


def ensure_objects(settings: Settings) -> list[str]:
    """Create the peering objects this operator needs where they are missing; returns what it created."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    assert settings.peering is not None
    api_client, _ = new_client()
    custom = client.CustomObjectsApi(api_client)
    created = []
    try:
        for namespace in settings.namespaces or (None,):
            kind = "KopfPeering" if namespace else "ClusterKopfPeering"
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": settings.peering}}
            try:
                if namespace:
                    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "kopfpeerings", body)
                else:
                    custom.create_cluster_custom_object(GROUP, VERSION, "clusterkopfpeerings", body)
            except ApiException as e:
                if e.status != 409:
                    raise
                continue
            created.append(f"{kind} {namespace + '/' if namespace else ''}{settings.peering}")
            log.info("created %s", created[-1])
    finally:
        api_client.close()
    return created
