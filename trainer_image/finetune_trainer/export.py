"""Export a fine-tuned classifier (a save_pretrained folder) for serving, and prove the export is faithful.

    python -m finetune_trainer export --model RUN/model --out RUN/export \\
        [--no-optimize] [--int8] [--require-tensorrt] [--eval-file val.csv --text-column text --label-column label]

Writes into ``--out``:

- ``model.onnx``: logits from input_ids, attention_mask (and token_type_ids when the model takes them),
  INT64, dynamic batch and sequence axes: by default the onnxruntime transformer optimizer's fused graph (the
  model is exported with eager attention so the optimizer can fuse it; on MiniLM about half the batch-1 latency
  of the unfused graph), or the unfused graph when the fused one fails the parity check, the model type has
  no fusion, or ``--no-optimize`` is given (the report's ``optimization`` says which);
- ``model.int8.onnx`` with ``--int8``: dynamic int8 quantization of that fp32 graph;
- ``model.plan`` when a CUDA GPU and the ``tensorrt`` module are present (skipped, with the reason, otherwise;
  with ``--require-tensorrt``, as the export step of a ``serving.backend: tensorrt`` job, their absence fails
  the export at its start instead, exit 2, before any work);
- the tokenizer files (tokenizer.json is required: the served tokenizer uses it), ``labels.txt``;
- ``preprocessing.json``: the model's recorded preprocessing (``finetune_trainer.preprocessing``), which the
  parity check and the evaluation here encode with, and the served tokenizer after them; a model folder
  without one (trained before it was recorded) gets the old behaviour, head truncation, and a warning;
- ``export_report.json``: what was exported, parity against PyTorch on held-out examples (max abs logit
  difference and argmax agreement), and with ``--eval-file`` the metrics of each variant next to PyTorch's.

The export fails (exit 1, report written with ``passed: false``) when the ONNX logits differ from PyTorch's by
more than ``--tolerance`` or disagree on any argmax.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune_trainer import contract, preprocessing
from finetune_trainer.errors import InputError
from finetune_trainer.preprocessing import TextEncoder
from finetune_trainer.sources import model_location
from finetune_trainer.storage import StorageError

log = logging.getLogger(__name__)

REPORT = "export_report.json"
SAMPLE_TEXTS = (
    "a",
    "This is a short sentence.",
    "The quick brown fox jumps over the lazy dog while the cat watches from the window.",
    "Numbers 1234 and symbols !? mixed with UPPER and lower case words",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " * 3,
)
# onnxruntime.transformers.optimizer model types for Hugging Face model_type values.
OPTIMIZER_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert"}


class ParityError(RuntimeError):
    """The exported graph does not reproduce PyTorch's logits."""


@dataclass
class ExportOptions:
    """What to export and how (the CLI flags of ``python -m finetune_trainer export``)."""

    model: Path
    out: Path
    opset: int = 17
    dynamo: bool = False
    optimize: bool = True
    int8: bool = False
    tensorrt: bool = True
    require_tensorrt: bool = False
    max_sequence_length: int | None = None
    max_batch_size: int = 32
    tolerance: float = 1e-3
    parity_samples: int = 32
    eval_file: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    max_eval_samples: int = 1000
    batch_size: int = 32
    text_pair: bool = False


@dataclass
class Examples:
    """Held-out texts (and labels when known)."""

    texts: list[str]
    pairs: list[str] | None = None
    labels: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------- loading


def load(model_dir: Path) -> tuple[Any, Any]:
    """The fine-tuned model (eager attention, eval mode) and its fast tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise InputError(f"--model {model_dir}: no config.json; expected a folder saved with save_pretrained")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager")
    except (OSError, ValueError) as e:
        raise InputError(f"--model {model_dir}: cannot load the classifier or its tokenizer: {e}") from None
    if not tokenizer.is_fast:
        raise InputError(f"--model {model_dir}: the tokenizer has no fast version (tokenizer.json); serving needs it")
    return model.eval(), tokenizer


def model_preprocessing(opts: ExportOptions, config: Any, tokenizer: Any) -> preprocessing.Preprocessing:
    """The preprocessing recorded with the model; for a model trained before it was recorded, the old behaviour
    (the first ``--max-sequence-length`` tokens, default the position limit, at most 512) with a warning."""
    pair = bool(opts.text_pair or opts.text_pair_column)
    try:
        recorded = preprocessing.load(opts.model)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise InputError(f"--model {opts.model}: unreadable {preprocessing.FILE}: {e}") from None
    if recorded is not None:
        length = opts.max_sequence_length
        if (length and length != recorded.max_length) or (pair and not recorded.text_pair):
            raise InputError(
                f"--model {opts.model}: {preprocessing.FILE} records max length {recorded.max_length} and text pair "
                f"{recorded.text_pair}; --max-sequence-length/--text-pair contradict it (leave them out)"
            )
        return recorded
    limits = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length, 512]
    prep = preprocessing.legacy(opts.max_sequence_length or min(int(x) for x in limits if x), pair)
    log.warning(
        "%s has no %s (trained before preprocessing was recorded): serving keeps the first %d tokens with no "
        "cleaning, which may differ from what it was trained on", opts.model, preprocessing.FILE, prep.max_length,
    )
    return prep


def input_names(model: Any, tokenizer: Any) -> list[str]:
    """input_ids, attention_mask, and token_type_ids when both the model and its tokenizer use them."""
    takes = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in takes and "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    return names


def label_names(config: Any) -> list[str]:
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    return [id2label.get(i, str(i)) for i in range(config.num_labels)]


def task_of(config: Any) -> str:
    if config.problem_type:
        return config.problem_type
    return "regression" if config.num_labels == 1 else "single_label_classification"


def load_examples(opts: ExportOptions, labels: list[str], task: str) -> Examples | None:
    """Labelled held-out examples from ``--eval-file`` (through the trainer's own data loader)."""
    if not opts.eval_file:
        return None
    from finetune_trainer.config import DatasetSpec, TaskSpec
    from finetune_trainer.data import encode_labels, load_split

    spec = DatasetSpec(
        train=opts.eval_file,
        text_column=opts.text_column,
        text_pair_column=opts.text_pair_column,
        label_column=opts.label_column,
    )
    with tempfile.TemporaryDirectory(prefix="export-data-") as cache:
        split = load_split(opts.eval_file, spec, "--eval-file", Path(cache))
    n = min(len(split.texts), opts.max_eval_samples)
    split.texts, split.labels = split.texts[:n], split.labels[:n]
    split.pairs = split.pairs[:n] if split.pairs is not None else None
    encoded = encode_labels(split, labels, TaskSpec(type=task, num_labels=len(labels)))
    return Examples(split.texts, split.pairs, encoded)


# -------------------------------------------------------------------------------------------- inference


def batches(encoder: TextEncoder, ex: Examples, names: Sequence[str], pad_id: int, batch_size: int):
    """Right-padded int64 batches in length order (less padding), with the indices that restore input order."""
    order = sorted(range(len(ex.texts)), key=lambda i: len(ex.texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        pairs = [ex.pairs[i] for i in idx] if ex.pairs is not None else None
        ids, types = encoder.encode([ex.texts[i] for i in idx], pairs)
        width = max(len(x) for x in ids)
        feed = {n: np.zeros((len(idx), width), dtype=np.int64) for n in names}
        feed["input_ids"][:] = pad_id
        for row, (x, t) in enumerate(zip(ids, types, strict=True)):
            feed["input_ids"][row, : len(x)] = x
            feed["attention_mask"][row, : len(x)] = 1
            if "token_type_ids" in feed:
                feed["token_type_ids"][row, : len(t)] = t
        yield idx, feed


def predict(run: Callable[[dict[str, np.ndarray]], np.ndarray], encoder, ex, names, pad_id, batch_size):
    """Logits of every example in input order."""
    out: np.ndarray | None = None
    for idx, feed in batches(encoder, ex, names, pad_id, batch_size):
        logits = run(feed)
        if out is None:
            out = np.zeros((len(ex.texts), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    assert out is not None
    return out


def torch_runner(model: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import torch

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.float().numpy()

    return run


def onnx_runner(path: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda feed: session.run(["logits"], feed)[0]


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs logit difference and argmax agreement."""
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "argmax_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
    }


# --------------------------------------------------------------------------------------------- building


def logits_module(model: Any) -> Any:
    """The HF model as a module with positional token inputs and one output, logits."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return self.model(**kwargs).logits

    return LogitsOnly().eval()


def export_onnx(model: Any, tokenizer: Any, names: list[str], path: Path, opset: int, dynamo: bool) -> None:
    """torch.onnx.export with dynamic batch and sequence axes."""
    import torch

    enc = tokenizer(list(SAMPLE_TEXTS[:2]), padding=True, return_tensors="pt")
    args = tuple(enc[n].to(torch.int64) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    kwargs: dict[str, Any] = {"dynamo": dynamo, "opset_version": opset}
    if dynamo:
        kwargs["opset_version"] = max(opset, 18)  # the dynamo exporter's lowest implemented opset
    torch.onnx.export(
        logits_module(model),
        args,
        str(path),
        input_names=names,
        output_names=["logits"],
        dynamic_axes=axes,
        **kwargs,
    )


def optimize(src: Path, dst: Path, config: Any) -> dict[str, Any]:
    """onnxruntime transformer fusion (attention, layer norm, GELU) for BERT-family graphs."""
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = OPTIMIZER_TYPES.get(config.model_type)
    if model_type is None:
        return {"status": "skipped", "reason": f"no onnxruntime fusion for model_type {config.model_type!r}"}
    optimized = optimize_model(
        str(src), model_type=model_type, num_heads=config.num_attention_heads, hidden_size=config.hidden_size
    )
    optimized.save_model_to_file(str(dst))
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    return {"status": "done", "fused_operators": fused}


def passes(check: dict[str, float], tolerance: float, task: str) -> bool:
    return check["max_abs_diff"] <= tolerance and (check["argmax_agreement"] == 1.0 or task == "regression")


def fastest_passing(fp32: Path, config: Any, check: Callable[[Path], dict[str, float]], tolerance: float,
                    task: str) -> dict[str, Any]:
    """Replace the exported graph at ``fp32`` by the optimizer's fused graph when that passes the parity check;
    keep the unfused one (and say why) otherwise."""
    fused = fp32.with_name(".model.fused.onnx")
    try:
        result = optimize(fp32, fused, config)
    except Exception as e:  # the optimizer cannot handle this graph: the unfused one is still faithful
        log.warning("onnxruntime optimizer failed on %s: %s", fp32.name, e)
        result = {"status": "failed", "reason": f"onnxruntime optimizer: {type(e).__name__}: {e}"}
    if result["status"] != "done":
        fused.unlink(missing_ok=True)
        return result
    parity = check(fused)
    if not passes(parity, tolerance, task):
        fused.unlink()
        return {"status": "rejected", "reason": "the fused graph failed the parity check; the unfused one is served",
                "parity": parity, "fused_operators": result["fused_operators"]}
    fused.replace(fp32)
    return {**result, "parity": parity}


def quantize(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of weights, per output channel (activations quantized at run time)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Fused contrib ops (Attention, SkipLayerNormalization) defeat shape inference; their outputs are float.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    # Per-channel weight scales: on MiniLM/Yahoo, argmax agreement with fp32 rose from 0.81 to 0.91.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, extra_options=extra)


def tensorrt_missing() -> str | None:
    """Why no TensorRT engine can be built here (no CUDA GPU, no tensorrt module), or None when one can."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible; TensorRT needs a GPU to build model.plan"
    if importlib.util.find_spec("tensorrt") is None:
        return ("the tensorrt Python module is not installed (build the trainer image's GPU variant: "
                "--build-arg VARIANT=gpu)")
    return None


def build_tensorrt(onnx_path: Path, plan: Path, names: list[str], max_batch: int, max_len: int) -> dict[str, Any]:
    """A TensorRT engine with one optimization profile over batch and sequence, when a GPU allows it."""
    missing = tensorrt_missing()
    if missing is not None:
        return {"status": "skipped", "reason": missing}
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    flags = 1 << int(explicit) if explicit is not None and int(trt.__version__.split(".")[0]) < 10 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return {"status": "failed", "reason": f"TensorRT cannot parse {onnx_path.name}: {errors}"}
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    opt = (min(8, max_batch), min(128, max_len))
    for n in names:
        profile.set_shape(n, (1, 1), opt, (max_batch, max_len))
    config.add_optimization_profile(profile)
    if builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        return {"status": "failed", "reason": "TensorRT failed to build the engine (see its log above)"}
    plan.write_bytes(bytes(engine))
    return {
        "status": "done",
        "file": plan.name,
        "tensorrt_version": trt.__version__,
        "fp16": builder.platform_has_fast_fp16,
        "profile": {"min": [1, 1], "opt": list(opt), "max": [max_batch, max_len]},
    }


def file_info(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def write_report(out: Path, report: dict[str, Any]) -> None:
    (out / REPORT).write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


# ----------------------------------------------------------------------------------------------- export


def export(opts: ExportOptions) -> dict[str, Any]:
    """Run the whole export; returns the report (also written to ``out/export_report.json``).

    Raises:
        InputError: unreadable model folder, tokenizer without tokenizer.json, bad eval file or columns.
        ParityError: the ONNX graph's logits differ from PyTorch's beyond the tolerance.
    """
    start = time.monotonic()
    if opts.require_tensorrt and (missing := tensorrt_missing()) is not None:
        raise InputError(f"serving.backend tensorrt: {missing}. Run the export on a GPU node with the trainer "
                         "image's GPU variant, or serve with backend onnxruntime")
    model, tokenizer = load(opts.model)
    config = model.config
    names = input_names(model, tokenizer)
    labels = label_names(config)
    task = task_of(config)
    prep = model_preprocessing(opts, config, tokenizer)
    encoder = TextEncoder(tokenizer.backend_tokenizer, prep)
    pad_id = tokenizer.pad_token_id or 0
    opts.out.mkdir(parents=True, exist_ok=True)
    held_out = load_examples(opts, labels, task)
    parity_ex = Examples(list(SAMPLE_TEXTS))
    if held_out is not None:
        k = min(opts.parity_samples, len(held_out.texts))
        parity_ex = Examples(held_out.texts[:k], held_out.pairs[:k] if held_out.pairs is not None else None)

    tokenizer.save_pretrained(opts.out)
    if not (opts.out / "tokenizer.json").is_file():
        raise InputError(f"--model {opts.model}: the tokenizer did not save a tokenizer.json; serving needs it")
    (opts.out / "labels.txt").write_text("\n".join(labels) + "\n")
    prep.save(opts.out)

    report: dict[str, Any] = {
        "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_model": str(opts.model),
        "model_type": config.model_type,
        "task": task,
        "labels": labels,
        "inputs": names,
        "outputs": ["logits"],
        "max_sequence_length": prep.max_length,
        "text_pair": prep.text_pair,
        "preprocessing": prep.to_dict(),
        "tokenizer": {
            "pad_token": tokenizer.pad_token,
            "pad_token_id": tokenizer.pad_token_id,
            "padding_side": tokenizer.padding_side,
        },
        "exporter": "dynamo" if opts.dynamo else "torchscript",
        "opset": opts.opset,
    }
    fp32 = opts.out / "model.onnx"
    export_onnx(model, tokenizer, names, fp32, opts.opset, opts.dynamo)

    def logits_of(run, ex: Examples) -> np.ndarray:
        return predict(run, encoder, ex, names, pad_id, opts.batch_size)

    reference = logits_of(torch_runner(model), parity_ex)
    single = Examples(parity_ex.texts[:1], parity_ex.pairs[:1] if parity_ex.pairs is not None else None)
    checks = {
        "batched": compare(reference, logits_of(onnx_runner(fp32), parity_ex)),
        "single": compare(reference[:1], logits_of(onnx_runner(fp32), single)),
    }
    if opts.optimize:
        report["optimization"] = fastest_passing(fp32, config, lambda p: compare(reference, logits_of(onnx_runner(p),
                                                 parity_ex)), opts.tolerance, task)
        if report["optimization"]["status"] == "done":
            checks["optimized"] = report["optimization"]["parity"]
    else:
        report["optimization"] = {"status": "skipped", "reason": "not asked (--no-optimize)"}
    worst = max(c["max_abs_diff"] for c in checks.values())
    agreement = min(c["argmax_agreement"] for c in checks.values())
    passed = all(passes(c, opts.tolerance, task) for c in checks.values())
    report["parity"] = {
        "examples": len(parity_ex.texts),
        "source": opts.eval_file or "built-in sample sentences",
        "max_abs_diff": worst,
        "argmax_agreement": agreement,
        "tolerance": opts.tolerance,
        "passed": passed,
        "checks": checks,
    }
    if not passed:
        write_report(opts.out, report)
        raise ParityError(
            f"ONNX export of {opts.model} does not match PyTorch: max abs logit difference {worst:.3g} "
            f"(tolerance {opts.tolerance:g}), argmax agreement {agreement:.3f} on {len(parity_ex.texts)} examples; "
            f"see {opts.out / REPORT}"
        )

    variants = {"fp32": fp32}
    if opts.int8:
        quantize(fp32, opts.out / "model.int8.onnx")
        variants["int8"] = opts.out / "model.int8.onnx"
        report["int8"] = {"vs_fp32": compare(reference, logits_of(onnx_runner(variants["int8"]), parity_ex))}
    report["files"] = {p.name: file_info(p) for p in variants.values()}

    if held_out is not None:
        report["evaluation"] = evaluate_variants(held_out, task, labels, model, variants, logits_of)
    report["tensorrt"] = (
        build_tensorrt(fp32, opts.out / "model.plan", names, opts.max_batch_size, prep.max_length)
        if opts.tensorrt
        else {"status": "skipped", "reason": "not asked (--no-tensorrt)"}
    )
    if report["tensorrt"]["status"] == "done":
        report["files"]["model.plan"] = file_info(opts.out / "model.plan")
    report["seconds"] = round(time.monotonic() - start, 2)
    write_report(opts.out, report)
    return report


def evaluate_variants(ex: Examples, task: str, labels: list[str], model, variants, logits_of) -> dict[str, Any]:
    """Metrics of PyTorch and of each ONNX variant on the labelled held-out set."""
    from finetune_trainer.evaluate import compute, scalars

    results: dict[str, Any] = {"examples": len(ex.texts)}
    reference = logits_of(torch_runner(model), ex)
    results["pytorch"] = scalars(compute(task, reference, ex.labels, labels))
    for name, path in variants.items():
        logits = logits_of(onnx_runner(path), ex)
        results[name] = scalars(compute(task, logits, ex.labels, labels)) | {"vs_pytorch": compare(reference, logits)}
    if "int8" in results and "accuracy" in results["int8"]:
        results["int8_accuracy_drop_points"] = round(
            100 * (results["fp32"]["accuracy"] - results["int8"]["accuracy"]), 3
        )
    return results


# ---------------------------------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finetune_trainer export", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="fine-tuned model: a save_pretrained folder or an s3:// prefix")
    p.add_argument("--out", type=Path, required=True, help="export folder")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter")
    p.add_argument("--optimize", action="store_true", default=True,
                   help="(the default) serve onnxruntime's fused graph when it passes the parity check")
    p.add_argument("--no-optimize", dest="optimize", action="store_false", help="serve the unfused graph")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic quantization)")
    p.add_argument("--no-tensorrt", dest="tensorrt", action="store_false", help="never build model.plan")
    p.add_argument("--require-tensorrt", action="store_true",
                   help="fail at once (exit 2) unless a CUDA GPU and tensorrt can build model.plan")
    p.add_argument("--max-sequence-length", type=int,
                   help="only for a model without preprocessing.json: default its position limit, at most 512")
    p.add_argument("--max-batch-size", type=int, default=32, help="largest batch of the TensorRT profile")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest accepted abs logit difference")
    p.add_argument("--parity-samples", type=int, default=32)
    p.add_argument("--eval-file", help="labelled held-out data (csv, tsv, json, jsonl) for parity and metrics")
    p.add_argument("--text-column", default="text")
    p.add_argument("--text-pair-column")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-eval-samples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--text-pair", action="store_true",
                   help="the model classifies text pairs (recorded in preprocessing.json by training)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        # The trained model may be a folder, or an s3:// prefix the trainer uploaded it to (fetched to scratch).
        with tempfile.TemporaryDirectory(prefix="finetune-export-") as scratch:
            args.model = Path(model_location(str(args.model), "--model", Path(scratch)))
            report = export(ExportOptions(**vars(args)))
    except (InputError, ParityError) as e:  # retrying cannot fix either
        return contract.fail(e, contract.EXIT_BAD_INPUT)
    except StorageError as e:
        return contract.fail(e, contract.EXIT_FAILED)
    summary = {k: report[k] for k in ("parity", "optimization", "tensorrt")} | {"files": list(report["files"])}
    if "evaluation" in report:
        summary["evaluation"] = {k: v for k, v in report["evaluation"].items() if k != "examples"}
    print(json.dumps(summary, indent=2))
    return 0
