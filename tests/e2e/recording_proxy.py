"""An RBAC-enforcing, recording reverse proxy in front of the Kubernetes API stand-in (which has no RBAC).

The operator's kubeconfig points at the proxy. Each request is seen as RBAC sees it, an (API group,
resource[/subresource], verb) triple: a triple the given rules do not grant is recorded as outside them and
answered 403 Forbidden as a real API server would answer it (unless the test lets it through), everything else is
forwarded (watch streams included). So the real operator runs a whole job with its Role's permissions, and the
test sees every call it made outside them.
"""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import Future
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

# /api/v1[/namespaces/NS]/RESOURCE[/NAME[/SUB]] and /apis/GROUP/VERSION[/namespaces/NS]/RESOURCE[/NAME[/SUB]]
_PATH = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<rest>.+)$")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


def rbac_triple(method: str, path: str, query: dict[str, str]) -> tuple[str, str, str] | None:
    """(group, resource, verb) of a resource request; None for discovery and other non-resource paths."""
    m = _PATH.match(path)
    if m is None:
        return None
    parts = m.group("rest").split("/")
    resource, name, sub = parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None
    if resource == "watch":  # the old /watch/ path form
        return (m.group("group") or "", parts[1], "watch")
    verb = {
        "GET": "watch" if query.get("watch") in ("1", "true") else ("get" if name else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }[method]
    return (m.group("group") or "", f"{resource}/{sub}" if sub else resource, verb)


class RecordingProxy:
    """Serves on 127.0.0.1:<free port> from a background thread; ``requests`` holds what passed through."""

    def __init__(self, upstream: str, allowed: set[tuple[str, str, str]],
                 let_through: set[tuple[str, str, str]] = frozenset()) -> None:  # fmt: skip
        self.upstream = upstream.rstrip("/")
        self.allowed, self.let_through = allowed, let_through
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.outside: set[tuple[str, str, str]] = set()
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def triples(self) -> set[tuple[str, str, str]]:
        """Every resource request made, granted or not."""
        return {t for m, p, q in list(self.requests) if (t := rbac_triple(m, p, q)) is not None}

    def kubeconfig(self, path: Path, namespace: str) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "proxy", "user": {"token": "operator"}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy", "namespace": namespace}}],
            "current-context": "proxy",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        triple = rbac_triple(request.method, request.path, dict(request.query))
        if triple is not None and triple not in self.allowed:
            self.outside.add(triple)
        if triple is not None and triple not in self.allowed and triple not in self.let_through:
            group, resource, verb = triple
            message = f'{resource} is forbidden: cannot {verb} resource "{resource}" in API group "{group}"'
            status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": "Forbidden", "code": 403}  # fmt: skip
            return web.json_response(status, status=403)
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body or None,
                                         headers=headers) as upstream:  # fmt: skip
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP:
                    response.headers[key] = value
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, ConnectionResetError):
                pass  # the API server ended a watch stream, or the client went away
            return response

    def start(self) -> RecordingProxy:
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="api-proxy", daemon=True)
        self._thread.start()
        ready.result(timeout=30)
        return self

    def _serve(self, ready: Future[None]) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)

        async def setup() -> None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
            app = web.Application(client_max_size=64 * 1024**2)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"

        try:
            self._loop.run_until_complete(setup())
        except Exception as e:
            ready.set_exception(e)
            return
        ready.set_result(None)
        self._loop.run_forever()

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)


def summary(triples: set[tuple[str, str, str]]) -> list[str]:
    return sorted(f"{g or 'core'}/{r}:{v}" for g, r, v in triples)
