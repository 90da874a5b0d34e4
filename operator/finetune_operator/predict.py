"""`finetune predict`: classify texts with a model served by Triton, over HTTP or gRPC (no torch needed).

    finetune predict --url http://127.0.0.1:8000 --model sentiment "what a great film" "dull and long"
    finetune predict --url 127.0.0.1:8001 --grpc --model sentiment --version 1 "what a great film"

Without ``--version`` the text-in ensemble ``NAME_text`` runs the latest version. With ``--version N`` the
client runs version N of the tokenizer, classifier and postprocess models itself (an ensemble always runs the
latest version of its steps). Prints one line per text: the label, each label's probability, the text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune_trainer.contract import triton_address


@dataclass
class Prediction:
    text: str
    label: str
    probabilities: dict[str, float]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `finetune predict`."""
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="texts to classify")
    parser.add_argument(
        "--url",
        default=os.environ.get("FINETUNE_TRITON_URL", "127.0.0.1:8000"),
        help="Triton address, host:port or http(s)://host:port (default $FINETUNE_TRITON_URL or 127.0.0.1:8000)",
    )
    parser.add_argument("--grpc", action="store_true", help="use gRPC (give the gRPC port, usually 8001)")
    parser.add_argument("--model", required=True, help="published model name (as given to publish --name)")
    parser.add_argument("--version", type=int, help="model version (default: the latest, through the ensemble)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of text")


def _client(url: str, grpc: bool) -> tuple[Any, Any]:
    where = triton_address(url)
    if grpc or where.protocol == "grpc":
        import tritonclient.grpc as module

        return module.InferenceServerClient(where.address), module
    import tritonclient.http as module

    return module.InferenceServerClient(where.address, ssl=where.ssl, connection_timeout=10), module


def _config(client: Any, model: str, version: str = "") -> dict[str, Any]:
    config = client.get_model_config(model, version, **({"as_json": True} if _is_grpc(client) else {}))
    return config.get("config", config)


def _is_grpc(client: Any) -> bool:
    return type(client).__module__.startswith("tritonclient.grpc")


def _infer(client: Any, module: Any, model: str, version: str, inputs: dict[str, np.ndarray], outputs: list[str]):
    from tritonclient.utils import np_to_triton_dtype

    tensors = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    requested = [module.InferRequestedOutput(n) for n in outputs]
    result = client.infer(model, tensors, model_version=version, outputs=requested)
    return {n: result.as_numpy(n) for n in outputs}


def predict(url: str, model: str, texts: list[str], version: int | None = None, grpc: bool = False) -> list[Prediction]:
    """Label and probabilities of each text from the served model ``model``.

    Raises:
        tritonclient.utils.InferenceServerException: Triton is unreachable or the model is not served.
    """
    client, module = _client(url, grpc)
    ensemble, tokenizer, postprocess = f"{model}_text", f"{model}_tokenizer", f"{model}_postprocess"
    config = _config(client, ensemble)
    labels = json.loads(config["parameters"]["labels"]["string_value"])
    batch = max(1, int(config.get("max_batch_size", 1)))
    inputs = [t["name"] for t in _config(client, model, str(version) if version else "")["input"]]
    out: list[Prediction] = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        text = np.array([[t.encode("utf-8")] for t in chunk], dtype=object)
        if version is None:
            result = _infer(client, module, ensemble, "", {"TEXT": text}, ["LABEL", "PROBABILITIES"])
        else:
            v = str(version)
            tokens = _infer(client, module, tokenizer, v, {"TEXT": text}, inputs)
            logits = _infer(client, module, model, v, tokens, ["logits"])
            result = _infer(client, module, postprocess, v, logits, ["LABEL", "PROBABILITIES"])
        for t, label, probs in zip(chunk, result["LABEL"].reshape(-1), result["PROBABILITIES"], strict=True):
            name = label.decode("utf-8") if isinstance(label, bytes) else str(label)
            out.append(Prediction(t, name, {n: float(p) for n, p in zip(labels, probs, strict=True)}))
    return out


def run(args: argparse.Namespace) -> int:
    """Print the prediction of every text; 1 with a clear message when Triton or the model is not there."""
    from tritonclient.utils import InferenceServerException

    try:
        predictions = predict(args.url, args.model, args.texts, args.version, args.grpc)
    except InferenceServerException as e:
        what = f"{args.model}" + (f" version {args.version}" if args.version else "")
        print(f"error: Triton at {args.url} could not run {what}: {e.message()}", file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as e:
        print(f"error: Triton at {args.url} is not reachable: {e}", file=sys.stderr)
        return 1
    for p in predictions:
        if args.json:
            print(json.dumps({"text": p.text, "label": p.label, "probabilities": p.probabilities}))
        else:
            probs = " ".join(f"{n}={v:.4f}" for n, v in p.probabilities.items())
            print(f"{p.label}\t{probs}\t{p.text}")
    return 0
