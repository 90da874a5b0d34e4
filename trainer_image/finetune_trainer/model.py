"""The classifier: a pretrained encoder with a sequence-classification head, and its optimizer groups."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from finetune_trainer.config import Hyperparameters, ModelSpec, TaskType
from finetune_trainer.errors import InputError
from finetune_trainer.sources import model_location

log = logging.getLogger(__name__)

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "LayerNorm.bias", "norm.weight")


def load_tokenizer(spec: ModelSpec, cache_dir: Path) -> Any:
    from transformers import AutoTokenizer

    where = model_location(spec.name, "model.name", cache_dir)
    try:
        return AutoTokenizer.from_pretrained(where, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except OSError as e:
        raise InputError(f"model.name: cannot load a tokenizer from {spec.name}: {e}") from None


def load_model(spec: ModelSpec, task: TaskType, label_names: list[str], cache_dir: Path) -> torch.nn.Module:
    """AutoModelForSequenceClassification from a hub id or a local folder, with the job's labels."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    num_labels = 1 if task == TaskType.REGRESSION else len(label_names)
    extra: dict[str, Any] = {}
    if task != TaskType.REGRESSION:
        extra["id2label"] = dict(enumerate(label_names))
        extra["label2id"] = {n: i for i, n in enumerate(label_names)}
    where = model_location(spec.name, "model.name", cache_dir)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is expected when fine-tuning
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            where, revision=spec.revision, trust_remote_code=spec.trust_remote_code, num_labels=num_labels,
            problem_type=task.value if isinstance(task, TaskType) else task, ignore_mismatched_sizes=True, **extra,
        )
    except OSError as e:
        raise InputError(f"model.name: cannot load {spec.name}: {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def prepare(model: torch.nn.Module, hp: Hyperparameters) -> None:
    """Freeze the encoder and/or enable gradient checkpointing as the job asks."""
    if hp.freeze_encoder:
        for p in model.base_model.parameters():
            p.requires_grad_(False)
    if hp.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def param_groups(model: torch.nn.Module, hp: Hyperparameters) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and LayerNorm; the head may have its own learning rate."""
    encoder = {id(p) for p in model.base_model.parameters()}
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (id(p) in encoder, not any(tag in name for tag in NO_DECAY))
        groups.setdefault(key, []).append(p)
    head_lr = hp.head_learning_rate or hp.learning_rate
    return [
        {
            "params": params,
            "lr": hp.learning_rate if is_encoder else head_lr,
            "weight_decay": hp.weight_decay if decays else 0.0,
        }
        for (is_encoder, decays), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], not kv[0][1]))
    ]
