"""Combine the exports of an ensemble's members into one export that publishes as one model.

    python -m finetune_trainer combine --member RUN/members/0/export --member RUN/members/1/export ... \\
        --out RUN/export [--method mean|vote] [--config RUN/members/0/trainer-config.json] [--metrics-to DIR]
        (--config-json '{...}': the same config inline)

Every member was exported (ONNX, parity checked against PyTorch) by ``python -m finetune_trainer export``.
This checks that they can be served behind one tokenizer (same labels, task, tokenizer.json and
preprocessing), writes one ``model.onnx`` that runs them all and combines their probabilities
(``finetune_trainer.ensemble_graph``), and checks it: on held-out texts its probabilities must equal the
combination, computed in numpy, of the members' own ONNX outputs. With ``--config`` (a member's trainer config:
every member holds out the same rows) it evaluates the ensemble and each member on the validation and test
splits; ``--metrics-to`` (a folder or s3:// prefix) receives those metrics as ``metrics.json``.

The output folder is an ordinary export (``export_report.json`` with an ``ensemble`` section), so
``python -m finetune_trainer publish`` serves it as it serves one model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune_trainer import contract, ensemble_graph, preprocessing
from finetune_trainer.config import TrainerConfig, parse
from finetune_trainer.errors import InputError
from finetune_trainer.export import REPORT, file_info, write_report
from finetune_trainer.export_inputs import SAMPLE_TEXTS, Examples
from finetune_trainer.export_parity import onnx_runner, predict
from finetune_trainer.storage import StorageError

log = logging.getLogger(__name__)

PROBABILITY_TOLERANCE = 1e-5
NOT_COPIED = {"model.onnx", "model.int8.onnx", "model.plan", REPORT}
SAME = ("task", "labels", "max_sequence_length", "text_pair", "preprocessing")


@dataclass
class Member:
    index: int
    folder: Path
    report: dict[str, Any]


def read_members(folders: list[Path]) -> list[Member]:
    """The members' export reports, checked to be servable behind member 0's tokenizer.

    Raises:
        InputError: a member is missing, failed its parity check, or differs from member 0, naming both.
    """
    members = []
    for i, folder in enumerate(folders):
        path = folder / REPORT
        if not path.is_file():
            raise InputError(f"ensemble member {i} ({folder}): no {REPORT}; export it first")
        report = json.loads(path.read_text(encoding="utf-8"))
        if not report.get("parity", {}).get("passed"):
            raise InputError(f"ensemble member {i} ({folder}): its export failed the parity check")
        members.append(Member(i, folder, report))
    first = members[0]
    tokenizer = _digest(first.folder / "tokenizer.json")
    for m in members[1:]:
        for key in SAME:
            if m.report.get(key) != first.report.get(key):
                raise InputError(
                    f"ensemble member {m.index} ({m.folder}): {key} {m.report.get(key)!r} differs from member 0's "
                    f"{first.report.get(key)!r}; the members of one served model must agree"
                )
        if _digest(m.folder / "tokenizer.json") != tokenizer:
            raise InputError(
                f"ensemble member {m.index} ({m.folder}): its tokenizer differs from member 0's; one served "
                "tokenizer encodes for every member, so give them models with the same tokenizer"
            )
    return members


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def encoder_of(folder: Path, report: dict[str, Any]) -> preprocessing.TextEncoder:
    from tokenizers import Tokenizer

    prep = preprocessing.load(folder) or preprocessing.Preprocessing.from_dict(report["preprocessing"])
    return preprocessing.TextEncoder(Tokenizer.from_file(str(folder / "tokenizer.json")), prep)


def combine(members: list[Member], out: Path, method: str, config: TrainerConfig | None = None) -> dict[str, Any]:
    """Write the combined export into ``out``; returns its report.

    Raises:
        InputError: the members cannot be combined, or the combined graph does not reproduce them.
    """
    import onnx

    first = members[0].report
    task, labels = first["task"], first["labels"]
    inputs = [n for n in ("input_ids", "attention_mask", "token_type_ids")
              if any(n in m.report["inputs"] for m in members)]
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(members[0].folder.iterdir()):
        if f.is_file() and f.name not in NOT_COPIED:
            shutil.copy2(f, out / f.name)
    try:
        graph = ensemble_graph.combine([onnx.load(m.folder / "model.onnx") for m in members], inputs, task, method,
                                       len(labels))
    except ValueError as e:
        raise InputError(f"ensemble: {e}") from None
    onnx.save(graph, out / "model.onnx")

    encoder = encoder_of(out, first)
    pad_id = int(first.get("tokenizer", {}).get("pad_token_id") or 0)

    def outputs(ex: Examples) -> tuple[list[np.ndarray], np.ndarray]:
        per_member = [predict(onnx_runner(m.folder / "model.onnx"), encoder, ex, m.report["inputs"], pad_id, 32)
                      for m in members]  # fmt: skip
        return per_member, predict(onnx_runner(out / "model.onnx"), encoder, ex, inputs, pad_id, 32)

    splits = held_out_splits(config, labels, task) if config else {}
    sample = next(iter(splits.values()), None) or Examples(list(SAMPLE_TEXTS))
    per_member, combined = outputs(Examples(sample.texts[:64], sample.pairs[:64] if sample.pairs else None))
    diff = float(np.abs(served_probabilities(combined, task) - ensemble_graph.expected(per_member, task, method)).max())
    report = {k: first[k] for k in first if k in (*SAME, "format_version", "model_type", "tokenizer", "opset")}
    report |= {
        "created": first.get("created"), "inputs": inputs, "outputs": ["logits"],
        "parity": {"examples": len(per_member[0]), "max_abs_probability_diff": diff,
                   "tolerance": PROBABILITY_TOLERANCE, "passed": diff <= PROBABILITY_TOLERANCE,
                   "against": "the members' own ONNX outputs, combined in numpy"},
        "files": {"model.onnx": file_info(out / "model.onnx")},
        "optimization": {"status": "skipped", "reason": "an ensemble graph is not optimized"},
        "tensorrt": {"status": "skipped", "reason": "an ensemble is served by onnxruntime"},
        "ensemble": {"method": method, "members": [{"index": m.index, "source": m.report.get("source_model")}
                                                   for m in members]},
    }  # fmt: skip
    if splits:
        report["ensemble"]["metrics"] = evaluate(splits, outputs, task, labels, report["ensemble"]["members"])
    write_report(out, report)
    if diff > PROBABILITY_TOLERANCE:
        raise InputError(f"ensemble: the combined graph's probabilities differ from the members' combination by "
                         f"{diff:.3g} (tolerance {PROBABILITY_TOLERANCE:g}); see {out / REPORT}")
    return report


def served_probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """What the postprocess model makes of the combined graph's output."""
    from finetune_trainer.postprocessing import postprocess

    return postprocess(logits, [str(i) for i in range(logits.shape[1])], task)[1].astype(np.float64)


def held_out_splits(cfg: TrainerConfig, labels: list[str], task: str) -> dict[str, Examples]:
    """The validation and test rows every member held out (``cfg``: a member's trainer config)."""
    from finetune_trainer import data as D
    from finetune_trainer.roles import load_roles

    with tempfile.TemporaryDirectory(prefix="ensemble-data-") as cache:
        roles = load_roles(cfg.dataset, cfg.task, cfg.hold_out_seed, Path(cache))
    out = {}
    for name, split in (("validation", roles.validation), ("test", roles.test)):
        if split is not None and len(split.texts):
            out[name] = Examples(split.texts, split.pairs, D.encode_labels(split, labels, cfg.task))
    return out


def evaluate(splits: dict[str, Examples], outputs, task: str, labels: list[str],
             members: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The ensemble's metrics per split, and each member's (added to ``members``)."""
    from finetune_trainer.evaluate import compute, scalars

    metrics: dict[str, Any] = {}
    for name, ex in splits.items():
        per_member, combined = outputs(ex)
        metrics[name] = scalars(compute(task, combined, ex.labels, labels))
        for entry, logits in zip(members, per_member, strict=True):
            entry.setdefault("metrics", {})[name] = scalars(compute(task, logits, ex.labels, labels))
    return metrics


def metrics_record(report: dict[str, Any]) -> dict[str, Any]:
    """The ensemble's ``metrics.json``: its own metrics per split, the method and every member's."""
    ens = report["ensemble"]
    return {"ensemble": True, "method": ens["method"], **ens.get("metrics", {}), "members": ens["members"]}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finetune_trainer combine", description=__doc__.split("\n")[0])
    p.add_argument("--member", type=Path, action="append", required=True, help="a member's export folder")
    p.add_argument("--out", type=Path, required=True, help="the combined export folder")
    p.add_argument("--method", choices=("mean", "vote"), default="mean")
    p.add_argument("--config", type=Path, help="a member's trainer config: evaluate on its held-out splits")
    p.add_argument("--config-json", help="the same config, inline (the cluster's export pod)")
    p.add_argument("--metrics-to", help="folder or s3:// prefix that receives metrics.json")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = TrainerConfig.from_file(args.config) if args.config else None
        if args.config_json:
            config = parse(TrainerConfig, json.loads(args.config_json), prefix="--config-json")
        report = combine(read_members(args.member), args.out, args.method, config)
        if args.metrics_to:
            from finetune_trainer.storage import open_storage

            record = json.dumps(metrics_record(report), indent=2).encode()
            open_storage(args.metrics_to).put_bytes("metrics.json", record)
    except InputError as e:
        return contract.fail(e, contract.EXIT_BAD_INPUT)
    except StorageError as e:
        return contract.fail(e, contract.EXIT_FAILED)
    print(json.dumps({k: report[k] for k in ("parity", "ensemble")}, indent=2))
    return 0
