"""Checks of the recipe against the model's structure, before any worker starts: the model is built from its
config on the meta device (no weights read, no memory used) and the recipe applied to it."""

from __future__ import annotations

from pathlib import Path

import torch

from finetune_trainer.config import ModelSpec, TaskType, TrainerConfig
from finetune_trainer.errors import InputError
from finetune_trainer.sources import model_location


def skeleton(spec: ModelSpec, num_labels: int, cache_dir: Path) -> torch.nn.Module:
    """The classifier's modules with no weights behind them."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    where = model_location(spec.name, "model.name", cache_dir)
    try:
        config = AutoConfig.from_pretrained(where, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"model.name: cannot read a model config from {spec.name}: {e}") from None
    config.num_labels = num_labels
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config, trust_remote_code=spec.trust_remote_code)


def check_recipe(cfg: TrainerConfig, label_names: list[str], cache_dir: Path) -> None:
    """Raise InputError naming the field when the model (or the teacher) cannot take the job's recipe."""
    hp = cfg.hyperparameters
    if cfg.distillation is not None:
        from finetune_trainer.distill import check_teacher

        check_teacher(cfg.distillation, label_names, cache_dir)
    if hp.lora is None and not hp.train_top_layers and not hp.layer_decay and hp.head_dropout is None:
        return
    from finetune_trainer import layerwise, lora

    n = 1 if cfg.task.type == TaskType.REGRESSION else len(label_names)
    model = skeleton(cfg.model, n, cache_dir)
    if hp.head_dropout is not None:
        layerwise.head_dropout_kwargs(model.config, hp.head_dropout)
    if hp.train_top_layers or hp.layer_decay:
        layerwise.encoder_layers(model)
    if hp.train_top_layers:
        layerwise.train_top_layers(model, hp.train_top_layers)
    if hp.lora is not None:
        lora.target_modules(model, hp.lora)
