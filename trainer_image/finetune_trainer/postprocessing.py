"""Logits -> label names and probabilities: the one definition shared by the Triton postprocess model and
offline prediction (``finetune predict --model RUN_DIR/model``), so both report the same thing.

Single-label: softmax, the most probable label. Multi-label: sigmoid, every label at or above the threshold
joined by commas. Regression: the raw score as both.

This module imports only numpy: publication copies this very file into the postprocess model's version
folder, where the trainer package is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def postprocess(logits: np.ndarray, labels: Sequence[str], task: str,
                threshold: float = 0.5) -> tuple[list[str], np.ndarray]:
    """Label names (one string per row) and float32 probabilities (or scores) of ``logits`` [rows, outputs]."""
    logits = np.asarray(logits, dtype=np.float64)
    if task == "multi_label_classification":
        probs = 1.0 / (1.0 + np.exp(-logits))
        names = [",".join(n for n, p in zip(labels, row, strict=True) if p >= threshold) for row in probs]
    elif task == "regression":
        probs = logits
        names = [f"{row[0]:.6g}" for row in logits]
    else:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        names = [labels[i] for i in probs.argmax(axis=1)]
    return names, probs.astype(np.float32)


def confidence(probabilities: np.ndarray, task: str) -> list[float | None]:
    """The probability of the most probable label per row (None for regression, which has no probability)."""
    if task == "regression":
        return [None] * len(probabilities)
    return [float(p) for p in np.asarray(probabilities).max(axis=1)]
