"""Evaluation scores length-sorted batches and puts every logit back at its example's position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from finetune_trainer import dist
from finetune_trainer.config import TrainerConfig
from finetune_trainer.loop import Trainer
from finetune_trainer.run_setup import prepare_data
from finetune_trainer.train_eval import EVAL_BATCH_FACTOR

pytestmark = pytest.mark.slow


def test_predict_returns_logits_in_input_order_from_length_sorted_batches(tmp_path: Path, tiny_bert, sentiment_csv):
    train, val = sentiment_csv
    cfg = TrainerConfig.model_validate({
        "outputDir": str(tmp_path / "out"), "model": {"name": str(tiny_bert)},
        "dataset": {"train": str(train), "validation": str(val)},
        "hyperparameters": {"maxSteps": 1, "batchSize": 4, "precision": "fp32"},
    })
    info = dist.init()
    try:
        trainer = Trainer(cfg, info, prepare_data(cfg, tmp_path / "out" / ".cache"))
        try:
            data = trainer.p.validation
            assert len(set(data.lengths.tolist())) > 3, "the split must mix lengths for sorting to matter"
            assert len(data) > trainer.hp.batch_size * EVAL_BATCH_FACTOR, "more than one evaluation batch"
            sizes = []
            hook = trainer.model.register_forward_pre_hook(
                lambda m, args, kwargs: sizes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
            logits, loss = trainer.predict(data)
            hook.remove()

            # Batches went longest first and padded only to their own longest example.
            widths = [w for _, w in sizes]
            assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
            assert sizes[0][0] == trainer.hp.batch_size * EVAL_BATCH_FACTOR

            # Each example alone, in input order: the same logits at the same positions.
            trainer.model.eval()
            with torch.no_grad():
                alone = np.concatenate([
                    trainer.model(**{k: v for k, v in trainer.collate(data, [i]).items() if k != "labels"})
                    .logits.numpy() for i in range(len(data))
                ])
            np.testing.assert_allclose(logits, alone, atol=1e-5)
            expected = torch.nn.functional.cross_entropy(torch.from_numpy(alone), torch.from_numpy(data.labels))
            assert loss == pytest.approx(float(expected), abs=1e-5)
        finally:
            trainer.close()
    finally:
        dist.close()
