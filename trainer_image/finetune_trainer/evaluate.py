"""Evaluation metrics from logits and labels (numpy only), one function per task type."""

from __future__ import annotations

from typing import Any

import numpy as np

from finetune_trainer.config import TaskType

LOWER_IS_BETTER = {"loss", "mse", "mae", "rmse"}


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1


def _report(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, support: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Macro and micro precision/recall/F1 and a per-class report from per-class counts."""
    p, r, f1 = _prf(tp, fp, fn)
    mp, mr, mf = _prf(tp.sum(), fp.sum(), fn.sum())
    return {
        "precision_macro": float(p.mean()),
        "recall_macro": float(r.mean()),
        "f1_macro": float(f1.mean()),
        "precision_micro": float(mp),
        "recall_micro": float(mr),
        "f1_micro": float(mf),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(names)
        },
    }


def single_label(logits: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Accuracy, macro/micro precision-recall-F1, confusion matrix and a per-class report."""
    n = len(names)
    pred = logits.argmax(axis=-1)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    tp = np.diag(cm).astype(float)
    report = _report(tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp, cm.sum(axis=1), names)
    return {"accuracy": float((pred == labels).mean()), **report, "confusion_matrix": cm.tolist()}


def multi_label(logits: np.ndarray, labels: np.ndarray, names: list[str], threshold: float) -> dict[str, Any]:
    """Micro/macro F1 at a probability threshold, subset accuracy and a per-label report."""
    pred = 1.0 / (1.0 + np.exp(-logits)) >= threshold
    truth = labels >= 0.5
    tp = (pred & truth).sum(axis=0).astype(float)
    fp = (pred & ~truth).sum(axis=0).astype(float)
    fn = (~pred & truth).sum(axis=0).astype(float)
    return {
        "subset_accuracy": float((pred == truth).all(axis=1).mean()),
        "accuracy": float((pred == truth).mean()),
        **_report(tp, fp, fn, truth.sum(axis=0), names),
        "threshold": threshold,
    }


def average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks where tied values share the mean of their positions (Spearman's definition): scores on a
    1-5 scale are mostly ties, and ranking ties by position would invent an order that is not there."""
    order = np.argsort(a, kind="stable")
    ordered = a[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    ends = np.r_[starts[1:], len(a)]
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def regression(pred: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """MSE, RMSE, MAE and Pearson/Spearman correlation."""
    pred, target = pred.reshape(-1).astype(np.float64), target.reshape(-1).astype(np.float64)
    err = pred - target

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        if a.std() == 0 or b.std() == 0:
            return 0.0
        return float(np.corrcoef(a, b)[0, 1])

    return {
        "mse": float((err**2).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        "pearson": corr(pred, target),
        "spearman": corr(average_ranks(pred), average_ranks(target)),
    }


def compute(task: TaskType | str, logits: np.ndarray, labels: np.ndarray, names: list[str], threshold: float = 0.5):
    """Metrics for ``task`` (a dict of floats plus the nested confusion matrix and per-class report)."""
    if task == TaskType.REGRESSION:
        return regression(logits, labels)
    if task == TaskType.MULTI_LABEL:
        return multi_label(logits, labels, names, threshold)
    return single_label(logits, labels, names)


def default_metric(task: TaskType | str) -> str:
    return "mse" if task == TaskType.REGRESSION else "f1_macro"


def improved(value: float, best: float | None, metric: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in the metric's direction."""
    if best is None:
        return True
    if metric in LOWER_IS_BETTER:
        return value < best - min_delta
    return value > best + min_delta


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The flat float metrics (for logs, Prometheus and status), without matrices and reports."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
