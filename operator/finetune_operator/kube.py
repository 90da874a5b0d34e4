"""The operator's one Kubernetes client, the official one (``kubernetes``), for every API call outside kopf's own
watches: the controller's creates, deletes, lists, status patches and log reads, and `finetune submit|get|
logs|delete`.

Credentials come from the client's loaders: a kubeconfig when one is named (``--kubeconfig`` or $KUBECONFIG),
else the pod's service account, else ~/.kube/config. In a pod the loader sends the projected token as
``Authorization: bearer <token>`` and reads the file again before its cached copy is a minute old, so a
rotated token is picked up; a 401 all the same (a token revoked early) loads the credentials again, once.
Each controller call stays within the rules in rbac.py: create/delete/list Jobs, Services and ConfigMaps;
list, patch and delete pods (never create them: the Job controller does); patch finetunejobs/status; read
pods/log, events and Kueue's Workloads.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from finetune_operator import api

T = TypeVar("T")
IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"
TIMEOUT = 30  # seconds per request: a hung API server must not hold a job's loop forever
RAW = {"_preload_content": False, "_request_timeout": TIMEOUT}  # writes: the answer's body is not needed


class KubeError(Exception):
    """An API call failed with a status the caller did not expect."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSIONS = ("v1beta2", "v1beta1")  # newest first: Kueue 0.15+ serves v1beta2


def _status_message(body: Any, fallback: str) -> str:
    """The ``message`` of the API server's Status object (what kubectl prints), else the raw body."""
    try:
        said = json.loads(body)
    except (TypeError, ValueError):
        return str(body or fallback)[:500]
    return str(said.get("message") if isinstance(said, dict) and said.get("message") else body)[:500]


def new_client(kubeconfig: str | None = None, *, pool_size: int | None = None) -> tuple[client.ApiClient, str]:
    """An API client and the default namespace (the kubeconfig context's, else ``default``).

    Raises:
        kubernetes.config.ConfigException: no kubeconfig and not in a pod.
    """
    cfg = client.Configuration()
    namespace = "default"
    if kubeconfig or os.environ.get("KUBECONFIG") or not os.environ.get(IN_CLUSTER_ENV):
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        namespace = (active or {}).get("context", {}).get("namespace") or namespace
    else:
        config.load_incluster_config(client_configuration=cfg)
    if pool_size:
        cfg.connection_pool_maxsize = pool_size
    return client.ApiClient(cfg), namespace


def _drained(response: urllib3.BaseHTTPResponse) -> bool:
    """Give a write's connection back to the pool without parsing its answer into the client's models."""
    response.drain_conn()
    response.release_conn()
    return True


class Kube:
    """The controller's API calls, run in a thread pool of their own so that they never block kopf's loop.
    Create ignores 409 (already exists); delete ignores 404 (already gone)."""

    def __init__(self, factory: Callable[[], client.ApiClient] | None = None, *, limit: int = 32):
        self._factory = factory or (lambda: new_client(pool_size=limit)[0])
        self._client: client.ApiClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="kube")

    def _api(self) -> client.ApiClient:
        if self._client is None:
            self._client = self._factory()
        return self._client

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()

    async def call(self, method: Callable[[client.ApiClient], T], *, ok: tuple[int, ...] = ()) -> T | None:
        """Run ``method(api_client)`` in the pool; None when the API answers a status in ``ok``."""
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            api_client = self._api()
            try:
                return await loop.run_in_executor(self._pool, method, api_client)
            except ApiException as e:
                if e.status == 401 and attempt == 0:
                    self._client = None  # credentials revoked or rotated early: load them again, once
                    api_client.close()
                    continue
                if e.status in ok:
                    return None
                raise KubeError(e.status or 0, _status_message(e.body, str(e.reason))) from None
            except urllib3.exceptions.HTTPError as e:
                raise KubeError(0, f"cannot reach the API server: {e}") from None
        raise AssertionError("unreachable")

    async def create(self, obj: dict[str, Any]) -> bool:
        """Create a Job, Pod, Service or ConfigMap; False when it exists already."""
        ns, kind = obj["metadata"]["namespace"], obj["kind"]
        if kind == "Job":
            done = await self.call(lambda c: _drained(client.BatchV1Api(c).create_namespaced_job(ns, obj, **RAW)),
                                   ok=(409,))  # fmt: skip
            return done is not None
        create = {"Pod": "create_namespaced_pod", "Service": "create_namespaced_service",
                  "ConfigMap": "create_namespaced_config_map"}[kind]  # fmt: skip
        done = await self.call(lambda c: _drained(getattr(client.CoreV1Api(c), create)(ns, obj, **RAW)),
                               ok=(409,))  # fmt: skip
        return done is not None

    async def delete(self, namespace: str, plural: str, name: str, grace_seconds: int | None = None) -> bool:
        """Delete one object (pods get their grace period unless ``grace_seconds``); False when already gone.
        A Job is deleted in the foreground: it stays, marked deleting, until the garbage collector has deleted
        its pods, so whoever watches it knows when its workers have stopped."""
        if plural == "jobs":
            done = await self.call(lambda c: _drained(client.BatchV1Api(c).delete_namespaced_job(
                name, namespace, propagation_policy="Foreground", **RAW)), ok=(404,))  # fmt: skip
            return done is not None
        delete = {"pods": "delete_namespaced_pod", "services": "delete_namespaced_service",
                  "configmaps": "delete_namespaced_config_map"}[plural]  # fmt: skip
        grace = {} if grace_seconds is None else {"grace_period_seconds": grace_seconds}
        done = await self.call(lambda c: _drained(getattr(client.CoreV1Api(c), delete)(name, namespace, **grace,
                                                                                          **RAW)),
                               ok=(404,))  # fmt: skip
        return done is not None

    async def list_names(self, namespace: str, plural: str, selector: str) -> list[str]:
        if plural == "jobs":
            jobs = await self.call(lambda c: client.BatchV1Api(c).list_namespaced_job(
                namespace, label_selector=selector, _request_timeout=TIMEOUT))  # fmt: skip
            return [item.metadata.name for item in jobs.items] if jobs else []
        listing = {"pods": "list_namespaced_pod", "services": "list_namespaced_service",
                   "configmaps": "list_namespaced_config_map"}[plural]  # fmt: skip
        items = await self.call(lambda c: getattr(client.CoreV1Api(c), listing)(
            namespace, label_selector=selector, _request_timeout=TIMEOUT))  # fmt: skip
        return [item.metadata.name for item in items.items] if items else []

    async def warnings(self, namespace: str, uid: str, reason: str) -> list[tuple[str, str]]:
        """(time, message) of the Warning events with ``reason`` about the object ``uid``, oldest first."""
        events = await self.call(lambda c: client.CoreV1Api(c).list_namespaced_event(
            namespace, field_selector=f"involvedObject.uid={uid},reason={reason},type=Warning",
            _request_timeout=TIMEOUT))  # fmt: skip
        found = []
        for e in events.items if events else []:
            when = e.last_timestamp or e.event_time or e.first_timestamp
            found.append((when.isoformat() if when else "", e.message or ""))
        return sorted(found)

    async def workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]]:
        """Kueue's Workloads of one Job (label ``kueue.x-k8s.io/job-uid``); [] where Kueue is not installed."""
        for version in KUEUE_VERSIONS:
            try:
                found = await self.call(lambda c, v=version: client.CustomObjectsApi(c).list_namespaced_custom_object(
                    KUEUE_GROUP, v, namespace, "workloads", label_selector=f"{KUEUE_GROUP}/job-uid={job_uid}",
                    _request_timeout=TIMEOUT), ok=(404,))  # fmt: skip
            except KubeError as e:
                if e.status == 403:
                    return []  # not granted (an older chart): the job still shows Queued, without Kueue's reason
                raise
            if found is not None:
                return list(found.get("items") or [])
        return []

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource of a FineTuneJob (None values remove fields)."""

        def patch(c: client.ApiClient) -> bool:
            return _drained(client.CustomObjectsApi(c).patch_namespaced_custom_object_status(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": status}, **RAW,
                _content_type="application/merge-patch+json",
            ))  # fmt: skip

        await self.call(patch, ok=(404,))

    async def pod_log(self, namespace: str, name: str, container: str, tail_lines: int = 80) -> str:
        """The last lines of a container's log ("" when unavailable)."""
        try:
            text = await self.call(lambda c: client.CoreV1Api(c).read_namespaced_pod_log(
                name, namespace, container=container, tail_lines=tail_lines, _request_timeout=TIMEOUT))  # fmt: skip
        except KubeError:
            return ""
        return text or ""
