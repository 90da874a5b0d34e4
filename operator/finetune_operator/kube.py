"""A small asyncio client for the few API calls the operator makes (create, delete, list, patch status).

Credentials come from the kubernetes client's own loaders (in-cluster service account, else KUBECONFIG), so
every auth method it knows works; the requests go through one aiohttp session. Each call stays within the
rules in rbac.py: create/delete/list pods, services and configmaps; patch finetunejobs/status.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from finetune_operator import api

CORE = {"Pod": "pods", "Service": "services", "ConfigMap": "configmaps"}
MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """An API call failed with a status the caller did not expect."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass
class Connection:
    host: str
    headers: dict[str, str]
    ssl: ssl.SSLContext | bool


def load_connection() -> Connection:
    """Where the API server is and how to authenticate: in-cluster first, then the kubeconfig."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)
    headers = {}
    token = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
    if token:
        headers["Authorization"] = token if token.startswith("Bearer ") else f"Bearer {token}"
    context: ssl.SSLContext | bool = False
    if cfg.host.startswith("https"):
        if cfg.verify_ssl:
            context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
    return Connection(cfg.host.rstrip("/"), headers, context)


class Kube:
    """The operator's API calls. Create ignores 409 (already exists); delete ignores 404 (already gone)."""

    def __init__(self, connection: Connection | None = None, *, limit: int = 32):
        self._reloadable = connection is None
        self.conn = connection or load_connection()
        self.limit = limit
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            async with self._lock:
                if self._session is None or self._session.closed:
                    self._session = aiohttp.ClientSession(
                        headers=self.conn.headers,
                        connector=aiohttp.TCPConnector(limit=self.limit, ssl=self.conn.ssl),
                        timeout=aiohttp.ClientTimeout(total=30),
                    )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, *, body: Any = None, params: dict | None = None,
                      content_type: str = "application/json", ok: tuple[int, ...] = ()) -> Any:  # fmt: skip
        headers = {"Content-Type": content_type} if body is not None else {}
        for attempt in range(2):
            session = await self.session()
            async with session.request(method, self.conn.host + path, json=body, params=params, headers=headers) as r:
                retry = r.status == 401 and attempt == 0 and self._reloadable
                if not retry:
                    if r.status < 300:
                        return await r.json(content_type=None)
                    if r.status in ok:
                        return None
                    raise KubeError(r.status, (await r.text())[:500])
            # A rotated service-account token: read the credentials again, once.
            self.conn = load_connection()
            await session.close()
        raise KubeError(401, "unauthorized after reloading credentials")

    @staticmethod
    def path(namespace: str, plural: str, name: str | None = None) -> str:
        base = f"/api/v1/namespaces/{namespace}/{plural}"
        return f"{base}/{name}" if name else base

    async def create(self, obj: dict[str, Any]) -> bool:
        """Create a Pod, Service or ConfigMap; False when it exists already."""
        ns = obj["metadata"]["namespace"]
        created = await self.request("POST", self.path(ns, CORE[obj["kind"]]), body=obj, ok=(409,))
        return created is not None

    async def delete(self, namespace: str, plural: str, name: str) -> bool:
        """Delete one object (foreground for nothing: pods get their grace period); False when already gone."""
        done = await self.request("DELETE", self.path(namespace, plural, name), ok=(404,))
        return done is not None

    async def list_names(self, namespace: str, plural: str, selector: str) -> list[str]:
        listing = await self.request("GET", self.path(namespace, plural), params={"labelSelector": selector})
        return [item["metadata"]["name"] for item in listing.get("items", [])]

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource of a FineTuneJob (None values remove fields)."""
        path = f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.PLURAL}/{name}/status"
        await self.request("PATCH", path, body={"status": status}, content_type=MERGE_PATCH, ok=(404,))

    async def pod_log(self, namespace: str, name: str, container: str, tail_lines: int = 80) -> str:
        """The last lines of a container's log ("" when unavailable)."""
        session = await self.session()
        params = {"container": container, "tailLines": str(tail_lines)}
        async with session.get(self.conn.host + self.path(namespace, "pods", name) + "/log", params=params) as r:
            return await r.text() if r.status < 300 else ""
