"""The end of a run: its replicas' checksums, peak memory and throughput for metrics.json, and rank 0's saved
model, metrics and curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_trainer.report import plot_curves, write_metrics
from finetune_trainer.run_setup import Prepared


def checksum(model: torch.nn.Module) -> str:
    """A digest of every parameter's bytes: equal on all ranks iff the DDP replicas are in sync."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process and, on GPU, peak allocated device memory (MB)."""
    import resource

    out = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["gpu_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def throughput(history: list[dict[str, float]]) -> dict[str, float]:
    rates = [h["samples_per_second"] for h in history[1:]] or [h["samples_per_second"] for h in history]
    toks = [h["tokens_per_second"] for h in history[1:]] or [h["tokens_per_second"] for h in history]
    return {
        "samples_per_second": float(np.mean(rates)) if rates else 0.0,
        "tokens_per_second": float(np.mean(toks)) if toks else 0.0,
    }


def save_outputs(out: Path, model: torch.nn.Module, prepared: Prepared, summary: dict[str, Any], metric: str,
                 output_uri: str | None) -> None:
    """Rank 0's outputs: the model folder (merged LoRA weights, tokenizer, preprocessing), metrics.json and the
    training curve; copied to ``output_uri`` when set."""
    from finetune_trainer.lora import merged

    model_dir = out / "model"
    merged(model).save_pretrained(model_dir)
    prepared.tokenizer.save_pretrained(model_dir)
    prepared.preprocessing.save(model_dir)  # what export, serving and prediction encode text with
    write_metrics(out / "metrics.json", summary)
    plot_curves(out / "training_curve.png", summary["history"], summary["evals"], metric)
    if output_uri:
        from finetune_trainer.storage import open_storage

        store = open_storage(output_uri)
        for f in sorted(model_dir.iterdir()):
            store.put_file(f, f"model/{f.name}")
        store.put_file(out / "metrics.json", "metrics.json")
