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
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from finetune_trainer import contract
from finetune_trainer.errors import InputError
from finetune_trainer.export_graph import export_onnx, fastest_passing, quantize
from finetune_trainer.export_inputs import (
    SAMPLE_TEXTS,
    Examples,
    ExportOptions,
    input_names,
    label_names,
    load,
    load_examples,
    model_preprocessing,
    task_of,
)
from finetune_trainer.export_parity import ParityError, compare, onnx_runner, passes, predict, torch_runner
from finetune_trainer.export_tensorrt import build_tensorrt, tensorrt_missing
from finetune_trainer.preprocessing import TextEncoder
from finetune_trainer.sources import model_location
from finetune_trainer.storage import StorageError

REPORT = "export_report.json"


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
