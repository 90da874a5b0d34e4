"""`finetune predict --file DATA`: score every row of a csv, tsv, json or jsonl file and write the predictions
beside it (``reviews.csv`` -> ``reviews.predictions.csv``), each row as it was plus the predicted label, its
confidence and one probability per label (``prob_<label>`` columns; a ``prediction`` object in JSON)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune_trainer.errors import InputError

BATCH = 64


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of ``path`` as dicts, by its extension (tsv as the trainer reads it: tabs, no quoting)."""
    suffix = path.suffix.lower()
    try:
        with path.open(encoding="utf-8", newline="") as f:
            if suffix == ".csv":
                return list(csv.DictReader(f))
            if suffix == ".tsv":
                return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            if suffix == ".jsonl":
                return [json.loads(line) for line in f if line.strip()]
            if suffix == ".json":
                rows = json.load(f)
                return rows if isinstance(rows, list) else [rows]
    except FileNotFoundError:
        raise InputError(f"--file {path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise InputError(f"--file {path}: cannot read it: {e}") from None
    raise InputError(f"--file {path}: expected a .csv, .tsv, .json or .jsonl file")


def output_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.predictions{path.suffix}")


def run_columns(model: str) -> tuple[str | None, str | None]:
    """The text columns a local run trained on (``RUN_DIR/trainer-config.json`` beside ``RUN_DIR/model``)."""
    config = Path(model) / ".." / "trainer-config.json"
    if not config.is_file():
        return None, None
    dataset = json.loads(config.read_text(encoding="utf-8")).get("dataset", {})
    return dataset.get("textColumn"), dataset.get("textPairColumn")


def score(predictor: Callable[..., list[Any]], file: str, model: str, text_column: str | None = None,
          pair_column: str | None = None) -> Path:
    """Predict every row of ``file``; returns the path written."""
    path = Path(file)
    rows = read_rows(path)
    if not rows:
        raise InputError(f"--file {path}: no rows")
    default_text, default_pair = run_columns(model)
    text_column = text_column or default_text or "text"
    pair_column = pair_column or (default_pair if text_column == default_text else None)
    for flag, column in (("--text-column", text_column), ("--text-pair-column", pair_column)):
        if column is not None and column not in rows[0]:
            raise InputError(f"--file {path}: {flag} {column!r} not in columns {list(rows[0])}")
    for i, row in enumerate(rows, 1):
        for column in (text_column, pair_column):
            if column is not None and not isinstance(row.get(column), str):
                raise InputError(f"--file {path}: row {i} has no text in column {column!r}")
    predictions = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        pairs = [r[pair_column] for r in chunk] if pair_column else None
        predictions += predictor([r[text_column] for r in chunk], pairs)
    out = output_path(path)
    _write(out, rows, predictions)
    return out


def _write(out: Path, rows: list[dict[str, Any]], predictions: list[Any]) -> None:
    suffix = out.suffix.lower()
    if suffix in (".json", ".jsonl"):
        scored = [
            {**r, "prediction": {"label": p.label, "confidence": p.confidence, "probabilities": p.probabilities}}
            for r, p in zip(rows, predictions, strict=True)
        ]
        text = (json.dumps(scored, ensure_ascii=False, indent=1) + "\n" if suffix == ".json"
                else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in scored))
        out.write_text(text, encoding="utf-8")
        return
    labels = list(predictions[0].probabilities)
    columns = [*rows[0], "predicted_label", "confidence", *(f"prob_{n}" for n in labels)]
    with out.open("w", encoding="utf-8", newline="") as f:
        if suffix == ".tsv":
            writer = csv.DictWriter(f, columns, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        else:
            writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for r, p in zip(rows, predictions, strict=True):
            conf = "" if p.confidence is None else f"{p.confidence:.6f}"
            writer.writerow({**r, "predicted_label": p.label, "confidence": conf,
                             **{f"prob_{n}": f"{v:.6f}" for n, v in p.probabilities.items()}})
