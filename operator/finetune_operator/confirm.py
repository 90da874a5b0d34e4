"""Confirm a published model with Triton itself before status.model is set.

The export pod (resources.export_pod) exports the trained model and writes a new version into the model
repository; this module asks the Triton server named by ``spec.serving.tritonUrl`` whether the model is
ready and which versions it serves (model metadata). Only a ready model makes the job Succeeded.
"""

from __future__ import annotations

from finetune_operator.observed import Served
from finetune_trainer.contract import triton_address


def confirm(triton_url: str | None, name: str, version: int | None = None, *, timeout: float = 5.0) -> Served:
    """Ask Triton whether version ``version`` of ``name`` (the one the publish step wrote) is served and ready;
    without a version, the newest served one.

    Never raises: an unreachable server or an unknown model is a not-ready answer with a message.
    """
    if not triton_url:
        return Served(ready=False, name=name, message="spec.serving.tritonUrl is not set; cannot confirm")
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    where = triton_address(triton_url)
    try:
        client = httpclient.InferenceServerClient(where.address, ssl=where.ssl, connection_timeout=timeout,
                                                  network_timeout=timeout)  # fmt: skip
    except Exception as e:
        return Served(ready=False, name=name, endpoint=triton_url, message=f"cannot reach Triton: {e}")
    try:
        if not client.is_server_live():
            return Served(ready=False, name=name, endpoint=triton_url, message="Triton is not live")
        meta = client.get_model_metadata(name)
        versions = sorted(int(v) for v in meta.get("versions", []) if str(v).isdigit())
        if not versions:
            return Served(ready=False, name=name, endpoint=triton_url, message="Triton lists no version")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            return Served(False, name, version, triton_url, f"Triton serves versions {versions}, not {version}")
        if not client.is_model_ready(name, str(version)):
            return Served(False, name, version, triton_url, f"version {version} is not ready")
        return Served(ready=True, name=name, version=version, endpoint=triton_url)
    except InferenceServerException as e:
        return Served(ready=False, name=name, endpoint=triton_url, message=str(e.message() or e))
    except Exception as e:
        return Served(ready=False, name=name, endpoint=triton_url, message=f"cannot reach Triton: {e}")
    finally:
        client.close()
