"""`finetune predict`: classify texts with a model served by Triton (HTTP or gRPC, no torch needed), or with a
saved model folder in this process (the trainer's packages needed), the same way either way.

    finetune predict --url http://127.0.0.1:8000 --model sentiment "what a great film" "dull and long"
    finetune predict --url 127.0.0.1:8001 --grpc --model sentiment --version 1 "what a great film"
    finetune predict --model runs/sentiment-20261201-101500/model "what a great film"
    finetune predict --model runs/sentiment-20261201-101500/model            # interactive: one text a line
    finetune predict --model runs/.../model --file reviews.csv               # writes reviews.predictions.csv

``--model`` is a served model's name, or a folder saved by training (``RUN_DIR/model``): that folder is run
offline with its recorded preprocessing and the served model's postprocessing. Against Triton, without
``--version`` the text-in ensemble ``NAME_text`` runs the latest version; with ``--version N`` the client runs
version N of the tokenizer, classifier and postprocess models itself (an ensemble always runs the latest
version of its steps). Prints one line per text: the label, its confidence, each label's probability, the text.
With no text and no ``--file``, reads texts from standard input, one a line, until end of input or ``q``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune_trainer.contract import triton_address
from finetune_trainer.errors import InputError


@dataclass
class Prediction:
    text: str
    label: str
    probabilities: dict[str, float]
    confidence: float | None = None  # the highest probability; None for regression (a score, no probability)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `finetune predict`."""
    parser.add_argument("texts", nargs="*", metavar="TEXT",
                        help="texts to classify (none: read them from standard input, one a line, until q)")
    parser.add_argument(
        "--url",
        default=os.environ.get("FINETUNE_TRITON_URL", "127.0.0.1:8000"),
        help="Triton address, host:port or http(s)://host:port (default $FINETUNE_TRITON_URL or 127.0.0.1:8000)",
    )
    parser.add_argument("--grpc", action="store_true", help="use gRPC (give the gRPC port, usually 8001)")
    parser.add_argument("--model", required=True,
                        help="published model name (as given to publish --name), or a model folder (RUN_DIR/model)")
    parser.add_argument("--version", type=int, help="model version (default: the latest, through the ensemble)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    parser.add_argument("--file", help="score a csv, tsv, json or jsonl file; writes NAME.predictions.EXT beside it")
    parser.add_argument("--text-column", help="text column of --file (default: the run's, else text)")
    parser.add_argument("--text-pair-column", help="second text column of --file, for a sentence-pair model")


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


def predict(url: str, model: str, texts: list[str], version: int | None = None, grpc: bool = False,
            pairs: list[str] | None = None) -> list[Prediction]:
    """Label, confidence and probabilities of each text (and pair) from the served model ``model``.

    Raises:
        tritonclient.utils.InferenceServerException: Triton is unreachable or the model is not served.
    """
    client, module = _client(url, grpc)
    ensemble, tokenizer, postprocess = f"{model}_text", f"{model}_tokenizer", f"{model}_postprocess"
    config = _config(client, ensemble)
    labels = json.loads(config["parameters"]["labels"]["string_value"])
    task = _config(client, postprocess)["parameters"]["task"]["string_value"]
    batch = max(1, int(config.get("max_batch_size", 1)))
    inputs = [t["name"] for t in _config(client, model, str(version) if version else "")["input"]]
    out: list[Prediction] = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        strings = {"TEXT": _strings(chunk)}
        if pairs is not None:
            strings["TEXT_PAIR"] = _strings(pairs[start : start + batch])
        if version is None:
            result = _infer(client, module, ensemble, "", strings, ["LABEL", "PROBABILITIES"])
        else:
            v = str(version)
            tokens = _infer(client, module, tokenizer, v, strings, inputs)
            logits = _infer(client, module, model, v, tokens, ["logits"])
            result = _infer(client, module, postprocess, v, logits, ["LABEL", "PROBABILITIES"])
        confidences = _confidence(result["PROBABILITIES"], task)
        rows = zip(chunk, result["LABEL"].reshape(-1), result["PROBABILITIES"], confidences, strict=True)
        for t, label, probs, conf in rows:
            name = label.decode("utf-8") if isinstance(label, bytes) else str(label)
            out.append(Prediction(t, name, {n: float(p) for n, p in zip(labels, probs, strict=True)}, conf))
    return out


def _strings(texts: list[str]) -> np.ndarray:
    return np.array([[t.encode("utf-8")] for t in texts], dtype=object)


def _confidence(probabilities: np.ndarray, task: str) -> list[float | None]:
    # As finetune_trainer.postprocessing.confidence, which this torch-free client does not import.
    if task == "regression":
        return [None] * len(probabilities)
    return [float(p) for p in np.asarray(probabilities).max(axis=1)]


def predict_offline(folder: str, texts: list[str], pairs: list[str] | None = None) -> list[Prediction]:
    """What ``predict`` gives for the served model, from the model folder itself (in this process)."""
    return _offline(folder)(texts, pairs)


def _offline(folder: str) -> Callable[[list[str], list[str] | None], list[Prediction]]:
    try:
        from finetune_trainer.inference import LocalClassifier
        from finetune_trainer.postprocessing import confidence
    except ImportError as e:
        raise InputError(f"--model {folder}: offline prediction needs the trainer's packages "
                         f"(pip install 'finetune-operator[trainer]'): {e}") from None
    classifier = LocalClassifier(folder)

    def run(texts: list[str], pairs: list[str] | None = None) -> list[Prediction]:
        names, probs = classifier.predict(texts, pairs)
        conf = confidence(probs, classifier.task)
        return [
            Prediction(t, n, {label: float(v) for label, v in zip(classifier.labels, row, strict=True)}, c)
            for t, n, row, c in zip(texts, names, probs, conf, strict=True)
        ]

    return run


def _predictor(args: argparse.Namespace) -> Callable[[list[str], list[str] | None], list[Prediction]]:
    """Offline for a model folder, else the served model ``args.model`` at ``args.url``."""
    if Path(args.model).is_dir():
        return _offline(args.model)
    return lambda texts, pairs=None: predict(args.url, args.model, texts, args.version, args.grpc, pairs)


def _show(predictions: list[Prediction], as_json: bool) -> None:
    for p in predictions:
        if as_json:
            print(json.dumps({"text": p.text, "label": p.label, "confidence": p.confidence,
                              "probabilities": p.probabilities}), flush=True)
        else:
            probs = " ".join(f"{n}={v:.4f}" for n, v in p.probabilities.items())
            conf = "-" if p.confidence is None else f"{p.confidence:.4f}"
            print(f"{p.label}\t{conf}\t{probs}\t{p.text}", flush=True)


def interactive(predictor: Callable[[list[str], list[str] | None], list[Prediction]], as_json: bool) -> None:
    """One prediction per line of standard input, until end of input or a line ``q``."""
    prompt = sys.stdin.isatty()
    while True:
        if prompt:
            print("text (q to quit)> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "q":
            return
        if line.strip():
            _show(predictor([line.rstrip("\n")], None), as_json)


def run(args: argparse.Namespace) -> int:
    """Print (or, with --file, write) the predictions; 1 with a clear message when Triton or the model is not
    there, 2 for a bad model folder or file."""
    from tritonclient.utils import InferenceServerException

    from finetune_operator import predict_files

    try:
        predictor = _predictor(args)
        if args.file:
            out = predict_files.score(predictor, args.file, args.model, args.text_column, args.text_pair_column)
            print(f"wrote {out}", file=sys.stderr)
        elif args.texts:
            _show(predictor(args.texts, None), args.json)
        else:
            interactive(predictor, args.json)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except InferenceServerException as e:
        what = f"{args.model}" + (f" version {args.version}" if args.version else "")
        print(f"error: Triton at {args.url} could not run {what}: {e.message()}", file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as e:
        print(f"error: Triton at {args.url} is not reachable: {e}", file=sys.stderr)
        return 1
    return 0
