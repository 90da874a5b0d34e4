"""Triton's side of a publication: a client for ``--triton-url``, loading the published models (explicit model
control) with retries, checking that the new version is ready and serves what was published, and putting the
previous models back after a failed publication."""

from __future__ import annotations

import logging
import time
from typing import Any

from finetune_trainer import contract, triton_repo
from finetune_trainer.errors import PublishError

log = logging.getLogger(__name__)


def triton_client(url: str) -> Any:
    """A tritonclient for ``http://host:port``, ``host:port`` (HTTP) or ``grpc://host:port``."""
    where = contract.triton_address(url)
    if where.protocol == "grpc":
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(where.address)
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(where.address, ssl=where.ssl, network_timeout=120, connection_timeout=10)


def check_triton(url: str) -> Any:
    """A client for a live Triton, or PublishError before anything is written."""
    try:
        client = triton_client(url)
        if not client.is_server_live():
            raise PublishError(f"Triton at {url} is not live; nothing was written")
    except PublishError:
        raise
    except Exception as e:  # tritonclient raises its own, gevent's and socket errors for a server that is down
        raise PublishError(f"Triton at {url} is not reachable ({reason(e)}); nothing was written") from None
    return client


def reason(e: BaseException) -> str:
    text = getattr(e, "message", None)
    text = text() if callable(text) else text
    return f"{type(e).__name__}: {text or e}"


def load(client: Any, model: str, attempts: int, delay: float) -> None:
    """load_model with retries (a busy server, a repository that is still syncing)."""
    for attempt in range(1, attempts + 1):
        try:
            client.load_model(model)
            return
        except Exception as e:
            if attempt == attempts:
                raise PublishError(f"Triton could not load {model}: {reason(e)}") from None
            log.warning("load %s failed (%s); retry %d/%d", model, reason(e), attempt, attempts - 1)
            time.sleep(delay * attempt)


def check_version(client: Any, spec: triton_repo.ServingSpec, version: int) -> dict[str, Any]:
    """Version ``version`` of every model is ready and its metadata is what was published."""
    names = triton_repo.model_names(spec.name)
    metadata: dict[str, Any] = {}
    for model in names.all():
        v = str(triton_repo.ENSEMBLE_VERSION if model == names.ensemble else version)
        if not client.is_model_ready(model, v):
            raise PublishError(f"Triton loaded {model} but version {v} is not ready")
        meta = client.get_model_metadata(model, v)
        meta = meta if isinstance(meta, dict) else _grpc_dict(meta)
        metadata[model] = meta
        if v not in meta.get("versions", [v]):
            raise PublishError(f"Triton serves {model} versions {meta.get('versions')}, not {v}")
    inputs = [i["name"] for i in metadata[names.classifier]["inputs"]]
    outputs = [o["name"] for o in metadata[names.classifier]["outputs"]]
    if inputs != list(spec.inputs) or outputs != ["logits"]:
        raise PublishError(
            f"Triton's metadata for {spec.name}: inputs {inputs}, outputs {outputs}; expected "
            f"{list(spec.inputs)} -> ['logits']"
        )
    return metadata


def load_and_check(client: Any, spec: triton_repo.ServingSpec, version: int, attempts: int,
                   delay: float) -> dict[str, Any]:  # fmt: skip
    """Load every model of ``spec`` in Triton, then confirm ``version``; Triton's metadata per model."""
    for model in triton_repo.model_names(spec.name).all():
        load(client, model, attempts, delay)
    return check_version(client, spec, version)


def _grpc_dict(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


def reload(client: Any, names: triton_repo.ModelNames, existed: set[str]) -> None:
    """Bring Triton back to the restored repository: reload what existed, unload what did not."""
    for model in reversed(names.all()):
        try:
            if model in existed:
                client.load_model(model)
            else:
                client.unload_model(model)
        except Exception as e:
            log.warning("could not restore %s in Triton: %s", model, reason(e))
