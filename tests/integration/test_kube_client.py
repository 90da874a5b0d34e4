"""The operator's Kubernetes client as a pod uses it: the service-account token from its projected file, over
TLS with the cluster's CA, against an HTTPS server that checks the Authorization header as kube-apiserver's
token authenticator does (the scheme is case-insensitive, then exactly one token)."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kubernetes.config import incluster_config

from finetune_operator.kube import Kube, new_client


class ApiServer:
    """Answers 401 unless the request carries ``bearer <token>`` for the current token; records every header."""

    def __init__(self, cert: Path, key: Path, token: str):
        self.token = token
        self.seen: list[tuple[str, str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization") or ""
                outer.seen.append((self.command, self.path, auth))
                parts = auth.split()
                if len(parts) != 2 or parts[0].lower() != "bearer" or parts[1] != outer.token:
                    self._send(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
                    return
                self._send(201 if self.command == "POST" else 200, json.loads(body) if body else {"items": []})

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ApiServer, Path]]:
    """A pod's view: KUBERNETES_SERVICE_* and the service account's token and CA files."""
    cert, key, token = tmp_path / "ca.crt", tmp_path / "tls.key", tmp_path / "token"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    token.write_text("token-one")  # as the kubelet writes it: no newline
    server = ApiServer(cert, key, "token-one")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(cert))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    try:
        yield server, token
    finally:
        server.close()


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w", "namespace": "ml"}, "spec": {"containers": []}}


async def test_in_a_pod_every_call_sends_one_bearer_token(in_cluster: tuple[ApiServer, Path]) -> None:
    server, _ = in_cluster
    kube = Kube()
    try:
        assert await kube.create(POD)
        await kube.patch_status("ml", "sentiment", {"phase": "Running"})
        assert await kube.list_names("ml", "pods", "finetune.dev/job=sentiment") == []
        assert await kube.delete("ml", "pods", "w")
    finally:
        await kube.close()
    assert [(m, auth) for m, _, auth in server.seen] == [
        (method, "bearer token-one") for method in ("POST", "PATCH", "GET", "DELETE")
    ]


async def test_a_rotated_token_is_read_again(in_cluster: tuple[ApiServer, Path]) -> None:
    server, token = in_cluster
    kube = Kube()
    try:
        assert await kube.create(POD)
        token.write_text("token-two")  # the kubelet rotated the projected token; the old one is refused
        server.token = "token-two"
        assert await kube.create(POD)
    finally:
        await kube.close()
    assert [auth for _, _, auth in server.seen] == ["bearer token-one", "bearer token-one", "bearer token-two"]


def test_a_named_kubeconfig_wins_over_the_service_account(in_cluster: tuple[ApiServer, Path], tmp_path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "team-a"}}],
    }))  # fmt: skip
    api_client, namespace = new_client(str(kubeconfig))
    assert api_client.configuration.host == "https://127.0.0.1:1" and namespace == "team-a"
    api_client.close()
