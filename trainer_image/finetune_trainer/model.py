"""The classifier: a pretrained encoder with a sequence-classification head, and its optimizer groups."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from finetune_trainer.config import Hyperparameters, ModelSpec, TaskType
from finetune_trainer.errors import InputError
from finetune_trainer.layerwise import backbone, head_dropout_kwargs, lr_scales, train_top_layers
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


def load_model(spec: ModelSpec, task: TaskType, label_names: list[str], cache_dir: Path,
               head_dropout: float | None = None) -> torch.nn.Module:
    """AutoModelForSequenceClassification from a hub id or a local folder, with the job's labels."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    num_labels = 1 if task == TaskType.REGRESSION else len(label_names)
    extra: dict[str, Any] = {}
    if task != TaskType.REGRESSION:
        extra["id2label"] = dict(enumerate(label_names))
        extra["label2id"] = {n: i for i, n in enumerate(label_names)}
    where = model_location(spec.name, "model.name", cache_dir)
    if head_dropout is not None:
        config = AutoConfig.from_pretrained(where, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
        extra.update(head_dropout_kwargs(config, head_dropout))
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


def prepare(model: torch.nn.Module, hp: Hyperparameters) -> torch.nn.Module:
    """Freeze what the job does not train, add LoRA adapters, and/or enable gradient checkpointing."""
    if hp.freeze_encoder:
        for p in model.base_model.parameters():
            p.requires_grad_(False)
    if hp.train_top_layers:
        train_top_layers(model, hp.train_top_layers)
    if hp.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hp.lora is not None:
        from finetune_trainer import lora

        model = lora.wrap(model, hp.lora)
    counts = parameter_counts(model)
    log.info("trainable parameters: %d of %d (%.2f%%)", counts["trainable"], counts["total"],
             100 * counts["trainable"] / counts["total"])
    return model


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }


def checkpoint_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint must hold of the model: everything, or only the trained parameters when some are
    frozen (the frozen ones never change and come from the pretrained model again on resume)."""
    params = dict(model.named_parameters())
    if all(p.requires_grad for p in params.values()):
        return model.state_dict()
    return {n: p.detach() for n, p in params.items() if p.requires_grad}


def load_checkpoint_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``checkpoint_state`` output; every trained parameter must be in it."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    absent = sorted(trained.intersection(missing))
    if absent or unexpected:
        raise InputError(f"checkpoint does not fit this model's trained parameters (missing {absent[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}): was the job's model or recipe changed?")


def param_groups(model: torch.nn.Module, hp: Hyperparameters) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and LayerNorm; the head may have its own learning rate, and with
    layerDecay each encoder layer its own."""
    encoder = {id(p) for p in backbone(model).parameters()}
    scales = lr_scales(model, hp.layer_decay) if hp.layer_decay else {}
    head_lr = hp.head_learning_rate or hp.learning_rate
    groups: dict[tuple[bool, bool, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_encoder = id(p) in encoder
        lr = hp.learning_rate * scales.get(id(p), 1.0) if is_encoder else head_lr
        key = (is_encoder, not any(tag in name for tag in NO_DECAY), lr)
        groups.setdefault(key, []).append(p)
    return [
        {"params": params, "lr": lr, "weight_decay": hp.weight_decay if decays else 0.0}
        for (_, decays, lr), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], not kv[0][1], -kv[0][2]))
    ]
