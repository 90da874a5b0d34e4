"""LoRA through peft: adapters on the encoder's linear layers, the classification head trained in full, and the
merged model for publication (a plain Hugging Face classifier that exports and serves like any other)."""

from __future__ import annotations

import torch

from finetune_trainer.config import LoraSpec
from finetune_trainer.errors import InputError
from finetune_trainer.layerwise import backbone

FIELD = "hyperparameters.lora.targetModules"


def linear_names(model: torch.nn.Module) -> list[str]:
    """Qualified names of the encoder's linear layers, where adapters can go."""
    return [n for n, m in backbone(model).named_modules() if isinstance(m, torch.nn.Linear)]


def target_modules(model: torch.nn.Module, spec: LoraSpec) -> list[str]:
    """The layer names the adapters go on, checked against the model, naming the field when one is absent."""
    names = linear_names(model)
    short = sorted({n.rsplit(".", 1)[-1] for n in names})
    targets = list(spec.target_modules or [])
    if not targets:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        model_type = backbone(model).config.model_type
        targets = list(DEFAULTS.get(model_type) or [])
        if not targets:
            raise InputError(f"{FIELD}: no default for model type {model_type!r}; name some of its linear "
                             f"layers {short}")
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise InputError(f"{FIELD}: {missing} not among the model's linear layers {short}")
    return targets


def wrap(model: torch.nn.Module, spec: LoraSpec) -> torch.nn.Module:
    """A peft model whose trainable parameters are the adapters and the classification head: the classifier
    and, where the encoder has one, its pooler, which only the classification path uses."""
    from peft import LoraConfig, TaskType, get_peft_model

    pooler = getattr(backbone(model), "pooler", None)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
        target_modules=target_modules(model, spec), modules_to_save=["pooler"] if pooler is not None else None,
    )
    return get_peft_model(model, config)


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """The plain classifier with every adapter folded into its layer's weight (changes ``model`` in place)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
