"""The parity check's machinery: PyTorch and an ONNX graph run on the same examples, their logits compared."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from finetune_trainer.export_inputs import Examples
from finetune_trainer.preprocessing import TextEncoder


class ParityError(RuntimeError):
    """The exported graph does not reproduce PyTorch's logits."""


def batches(encoder: TextEncoder, ex: Examples, names: Sequence[str], pad_id: int, batch_size: int):
    """Right-padded int64 batches in length order (less padding), with the indices that restore input order."""
    order = sorted(range(len(ex.texts)), key=lambda i: len(ex.texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        pairs = [ex.pairs[i] for i in idx] if ex.pairs is not None else None
        ids, types = encoder.encode([ex.texts[i] for i in idx], pairs)
        width = max(len(x) for x in ids)
        feed = {n: np.zeros((len(idx), width), dtype=np.int64) for n in names}
        feed["input_ids"][:] = pad_id
        for row, (x, t) in enumerate(zip(ids, types, strict=True)):
            feed["input_ids"][row, : len(x)] = x
            feed["attention_mask"][row, : len(x)] = 1
            if "token_type_ids" in feed:
                feed["token_type_ids"][row, : len(t)] = t
        yield idx, feed


def predict(run: Callable[[dict[str, np.ndarray]], np.ndarray], encoder, ex, names, pad_id, batch_size):
    """Logits of every example in input order."""
    out: np.ndarray | None = None
    for idx, feed in batches(encoder, ex, names, pad_id, batch_size):
        logits = run(feed)
        if out is None:
            out = np.zeros((len(ex.texts), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    assert out is not None
    return out


def torch_runner(model: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import torch

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.float().numpy()

    return run


def onnx_runner(path: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda feed: session.run(["logits"], feed)[0]


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs logit difference and argmax agreement."""
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "argmax_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
    }


def passes(check: dict[str, float], tolerance: float, task: str) -> bool:
    return check["max_abs_diff"] <= tolerance and (check["argmax_agreement"] == 1.0 or task == "regression")
