"""The run's artefacts besides the model: metrics.json and the training-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_metrics(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=float), encoding="utf-8")


def plot_curves(path: Path, history: list[dict[str, Any]], evals: list[dict[str, Any]], metric: str) -> None:
    """Training loss and learning rate per step, and evaluation loss and the selection metric per eval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    if history:
        steps = [h["step"] for h in history]
        ax_loss.plot(steps, [h["loss"] for h in history], label="train loss")
        ax_lr = ax_loss.twinx()
        ax_lr.plot(steps, [h["learning_rate"] for h in history], color="tab:gray", alpha=0.5, label="learning rate")
        ax_lr.set_ylabel("learning rate")
    if evals:
        ax_loss.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", label="eval loss")
        values = [e.get(metric, float("nan")) for e in evals]
        ax_metric.plot([e["step"] for e in evals], values, "o-", color="tab:green")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper right")
    ax_loss.set_title("Training")
    ax_metric.set_xlabel("step")
    ax_metric.set_ylabel(metric)
    ax_metric.set_title(f"Evaluation: {metric}")
    ax_metric.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
