"""What a run starts from, logged once and kept in metrics.json (``run_stats``): the label distribution of each
split, token-length percentiles before truncation and the share of examples truncated, trainable and total
parameters, and the device (with the GPU's name)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from finetune_trainer import data as D
from finetune_trainer.config import TaskType
from finetune_trainer.model import parameter_counts
from finetune_trainer.preprocessing import Preprocessing, TextEncoder

SAMPLE = 5000  # examples per split whose untruncated length is measured (a seeded sample of larger splits)
PERCENTILES = (50, 90, 95, 99)


def label_distribution(encoded: D.Encoded, names: list[str], task: str) -> dict[str, Any]:
    """Examples per label (multi-label: rows holding each label); for regression, the target's summary."""
    labels = encoded.labels
    if task == TaskType.REGRESSION:
        return {"mean": float(labels.mean()), "std": float(labels.std()), "min": float(labels.min()),
                "max": float(labels.max())}
    counts = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts, strict=True)}


def token_lengths(split: D.TextSplit, tokenizer: Any, prep: Preprocessing, seed: int) -> dict[str, Any]:
    """Percentiles of the untruncated token count and the share of examples longer than ``max_length``."""
    n = len(split.texts)
    ix = np.arange(n) if n <= SAMPLE else np.sort(np.random.default_rng(seed).choice(n, SAMPLE, replace=False))
    whole = Preprocessing(max_length=2**31 - 1, text_pair=prep.text_pair, cleaning=prep.cleaning)
    pairs = [split.pairs[i] for i in ix] if split.pairs is not None else None
    ids, _ = TextEncoder(tokenizer.backend_tokenizer, whole).encode([split.texts[i] for i in ix], pairs)
    lengths = np.array([len(x) for x in ids])
    out = {f"p{p}": float(np.percentile(lengths, p)) for p in PERCENTILES}
    out |= {"max": int(lengths.max()), "truncated_share": float((lengths > prep.max_length).mean()),
            "measured": len(ix)}
    return out


def data_stats(splits: dict[str, D.TextSplit], encoded: dict[str, D.Encoded], names: list[str], task: str,
               tokenizer: Any, prep: Preprocessing, seed: int) -> dict[str, Any]:
    """Per split: rows, label distribution and token lengths."""
    return {
        role: {"rows": len(split.texts), "labels": label_distribution(encoded[role], names, task),
               "token_lengths": token_lengths(split, tokenizer, prep, seed)}
        for role, split in splits.items()
    }


def model_stats(model: torch.nn.Module, device: torch.device, world_size: int) -> dict[str, Any]:
    """Trainable and total parameters, and where training runs."""
    out: dict[str, Any] = {
        "parameters": parameter_counts(model),
        "device": str(device),
        "world_size": world_size,
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def describe(stats: dict[str, Any]) -> list[str]:
    """The stats as log lines."""
    lines = []
    for role, s in stats.get("splits", {}).items():
        t = s["token_lengths"]
        lines.append(f"{role}: {s['rows']} rows, labels {s['labels']}, tokens p50={t['p50']:.0f} p95={t['p95']:.0f} "
                     f"max={t['max']}, {t['truncated_share']:.1%} truncated")
    p = stats["parameters"]
    where = stats["device"] + (f" ({stats['gpu']})" if "gpu" in stats else "")
    lines.append(f"parameters: {p['trainable']:,} trainable of {p['total']:,}; device {where} x {stats['world_size']}")
    return lines
