"""What an export reads: its options, the fine-tuned model folder (model, fast tokenizer, recorded preprocessing)
and the held-out examples its parity check and evaluation run on."""

from __future__ import annotations

import inspect
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune_trainer import preprocessing
from finetune_trainer.errors import InputError

log = logging.getLogger(__name__)

SAMPLE_TEXTS = (
    "a",
    "This is a short sentence.",
    "The quick brown fox jumps over the lazy dog while the cat watches from the window.",
    "Numbers 1234 and symbols !? mixed with UPPER and lower case words",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " * 3,
)  # parity examples when no --eval-file is given, and the inputs the graph is traced with


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
