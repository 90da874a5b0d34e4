"""Where each encoder parameter sits in the layer stack: layer-wise learning-rate decay, training only the top
layers, and the head's dropout."""

from __future__ import annotations

from typing import Any

import torch

from finetune_trainer.errors import InputError


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The pretrained encoder (``bert``, ``roberta``, ...) under a classifier, also when peft wraps it."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    return hf.base_model


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of transformer layers (BERT's ``encoder.layer``, DistilBERT's ``transformer.layer``, ...)."""
    base = backbone(model)
    n = getattr(base.config, "num_hidden_layers", None)
    for _, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise InputError(f"model.name: cannot find the {n} encoder layers of this {type(base).__name__}")


def depths(model: torch.nn.Module) -> dict[int, int]:
    """Parameter id -> depth: 0 for the embeddings, i + 1 for encoder layer i, the top layer's for the rest of
    the encoder (pooler, final norm), which sits on top of the stack."""
    layers = encoder_layers(model)
    top = len(layers)
    out = {id(p): top for p in backbone(model).parameters()}
    for i, layer in enumerate(layers):
        out.update({id(p): i + 1 for p in layer.parameters()})
    embeddings = getattr(backbone(model), "embeddings", None)
    if embeddings is not None:
        out.update({id(p): 0 for p in embeddings.parameters()})
    return out


def lr_scales(model: torch.nn.Module, decay: float) -> dict[int, float]:
    """Parameter id -> learning-rate multiplier: 1 at the top layer, times ``decay`` for each layer down."""
    d = depths(model)
    top = len(encoder_layers(model))
    return {pid: decay ** (top - depth) for pid, depth in d.items()}


def train_top_layers(model: torch.nn.Module, n: int) -> None:
    """Freeze the embeddings and every encoder layer below the top ``n``; the head and pooler stay trainable."""
    top = len(encoder_layers(model))
    if n > top:
        raise InputError(f"hyperparameters.trainTopLayers is {n} but the model has {top} encoder layers")
    d = depths(model)
    for p in backbone(model).parameters():
        if d[id(p)] <= top - n:
            p.requires_grad_(False)


def head_dropout_kwargs(config: Any, value: float) -> dict[str, float]:
    """The from_pretrained override that sets the dropout before the classification head of this model type."""
    for key in ("classifier_dropout", "seq_classif_dropout"):  # BERT/RoBERTa/ELECTRA, DistilBERT
        if hasattr(config, key):
            return {key: value}
    raise InputError(f"hyperparameters.headDropout: {type(config).__name__} has no classifier dropout setting")
