"""Scoring a split during and after training: every rank scores a shard, longest texts first, in inference mode
and the training precision; all ranks get the logits back in the split's order. A base of ``loop.Trainer``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from finetune_trainer import data as D
from finetune_trainer import dist, evaluate
from finetune_trainer.config import Hyperparameters, TaskType, TrainerConfig
from finetune_trainer.run_setup import Prepared

EVAL_BATCH_FACTOR = 4  # evaluation batch = 4 x hyperparameters.batchSize


class Evaluation:
    """``predict`` and ``evaluate`` for one worker."""

    cfg: TrainerConfig
    info: dist.DistInfo
    hp: Hyperparameters
    task: TaskType
    p: Prepared
    model: torch.nn.Module
    collate: Callable[..., dict[str, torch.Tensor]]
    timings: dict[str, float]
    _forward: Callable[[dict[str, torch.Tensor], torch.nn.Module], tuple[torch.Tensor, torch.Tensor]]  # loss, logits

    @torch.inference_mode()
    def predict(self, data: D.Encoded) -> tuple[np.ndarray, float]:
        """Logits for every example of ``data`` in its own order (each rank scores a shard; all ranks get all) and
        the mean loss.

        Inference mode, the training precision's autocast, batches of ``EVAL_BATCH_FACTOR`` x the training batch
        (no activations are kept for a backward pass), and each shard sorted by length, longest first, so a batch
        pads little; the logits are put back at their examples' positions."""
        self.model.eval()
        mine = sorted(range(self.info.rank, len(data), self.info.world_size), key=lambda i: -len(data.input_ids[i]))
        size = self.hp.batch_size * EVAL_BATCH_FACTOR
        logits, losses = [], []
        for i in range(0, len(mine), size):
            idx = mine[i : i + size]
            batch = {k: v.to(self.info.device) for k, v in self.collate(data, idx).items()}
            loss, out = self._forward(batch, self.model)
            logits.append(out.cpu().numpy())
            losses.append((loss.detach(), len(idx)))
        losses = [(float(loss), n) for loss, n in losses]  # one read of the losses per evaluation
        self.model.train()
        shards = dist.gather((mine, logits, losses), self.info)
        width = 1 if self.task == TaskType.REGRESSION else len(self.p.label_names)
        full = np.zeros((len(data), width), dtype=np.float32)
        total, count = 0.0, 0
        for idx, parts, ls in shards:
            if parts:
                full[idx] = np.concatenate(parts)
            total += sum(loss * n for loss, n in ls)
            count += sum(n for _, n in ls)
        return full, total / max(count, 1)

    def evaluate(self, data: D.Encoded) -> dict[str, Any]:
        start = time.perf_counter()
        logits, loss = self.predict(data)
        self.timings["evaluation_seconds"] = self.timings.get("evaluation_seconds", 0.0) + time.perf_counter() - start
        labels = data.labels
        result = evaluate.compute(self.task, logits, labels, self.p.label_names, self.cfg.task.multi_label_threshold)
        result["loss"] = loss
        return result
