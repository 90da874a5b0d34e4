"""The best model survives a restart: a run preempted after its best evaluation ends with the best checkpoint's
weights, not its final ones.

The validation scores are scripted (best at step 10, worse after), so which step is best does not depend on
how a tiny model happens to learn; training, checkpoints, preemption and resume are the real ones.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from finetune_trainer.checkpoint import CheckpointManager
from finetune_trainer.contract import EXIT_PREEMPTED
from finetune_trainer.loop import Trainer
from finetune_trainer.train import main

SCRIPTED_ACCURACY = {10: 0.9, 20: 0.6, 30: 0.5}
PREEMPT_AFTER = 25


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    evaluate, optimizer_step = Trainer.evaluate, Trainer._optimizer_step

    def scripted_evaluate(self: Trainer, data):
        result = evaluate(self, data)
        result["accuracy"] = SCRIPTED_ACCURACY.get(self.state.step, result["accuracy"])
        return result

    def preempting_step(self: Trainer):
        if self.state.step + 1 == PREEMPT_AFTER and not getattr(Trainer, "preempted_once", False):
            Trainer.preempted_once = True  # the first run only: as if the pod got SIGTERM here
            self.stop_requested = True
        return optimizer_step(self)

    monkeypatch.setattr(Trainer, "evaluate", scripted_evaluate)
    monkeypatch.setattr(Trainer, "_optimizer_step", preempting_step)
    monkeypatch.setattr(Trainer, "preempted_once", False, raising=False)


def test_best_weights_come_back_from_the_best_checkpoint_after_a_restart(tmp_path, tiny_bert, sentiment_csv,
                                                                         scripted) -> None:  # fmt: skip
    train, val = sentiment_csv
    storage = tmp_path / "checkpoints"
    cfg = {
        "jobName": "best",
        "outputDir": str(tmp_path / "out"),
        "model": {"name": str(tiny_bert)},
        "dataset": {"train": str(train), "validation": str(val)},
        "hyperparameters": {"maxSteps": 30, "evalSteps": 10, "learningRate": 3e-3, "batchSize": 8,
                            "precision": "fp32", "metricForBestModel": "accuracy"},
        "checkpoint": {"storage": str(storage), "everySteps": 10, "keepLast": 1},
    }
    config = tmp_path / "job.json"
    config.write_text(json.dumps(cfg))

    assert main(["--config", str(config)]) == EXIT_PREEMPTED
    assert main(["--config", str(config)]) == 0

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["best_metric"] == {"name": "accuracy", "value": 0.9, "step": 10}
    ckpt = CheckpointManager(str(storage / "default" / "best"))
    kept = ckpt.at(10)
    assert kept is not None, "retention keeps the best checkpoint beside the last"
    best = ckpt.load(kept)[0]["model"]
    last = ckpt.load(ckpt.latest())[0]["model"]
    ckpt.close()
    saved = load_file(tmp_path / "out" / "model" / "model.safetensors")
    assert "classifier.weight" in saved
    for name, tensor in saved.items():
        assert torch.equal(tensor, best[name]), f"{name} is not the best checkpoint's"
    assert not torch.equal(saved["classifier.weight"], last["classifier.weight"]), "the final weights differ"
