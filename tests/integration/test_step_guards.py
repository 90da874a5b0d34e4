"""A run fails loudly where it used to fail quietly: CUDA out of memory (injected on the CPU by a forward hook
raising torch's own OutOfMemoryError) and a loss that turns NaN (injected the same way)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from finetune_trainer import dist
from finetune_trainer.config import TrainerConfig
from finetune_trainer.guards import OutOfMemory, TrainingDiverged
from finetune_trainer.loop import Trainer
from finetune_trainer.run_setup import prepare_data

pytestmark = pytest.mark.slow


def config(tmp: Path, model: Path, csvs, **hp) -> TrainerConfig:
    train, val = csvs
    return TrainerConfig.model_validate({
        "outputDir": str(tmp / "out"), "model": {"name": str(model)},
        "dataset": {"train": str(train), "validation": str(val), "maxTrainSamples": 96},
        "hyperparameters": {"maxSteps": 8, "batchSize": 8, "learningRate": 3e-3, "precision": "fp32",
                            "logEverySteps": 1, "warmupRatio": 0.0, **hp},
    })


def run(cfg: TrainerConfig, pre_hook=None, post_hook=None) -> tuple[Trainer, dict | Exception]:
    """``fit`` in this process (one rank) with forward hooks on the model; returns the summary or the error."""
    info = dist.init()
    try:
        trainer = Trainer(cfg, info, prepare_data(cfg, Path(cfg.output_dir) / ".cache"))
        if pre_hook is not None:
            trainer.model.register_forward_pre_hook(pre_hook, with_kwargs=True)
        if post_hook is not None:
            trainer.model.register_forward_hook(post_hook)
        try:
            return trainer, trainer.run()
        except Exception as e:
            return trainer, e
        finally:
            trainer.close()
    finally:
        dist.close()


def oom_above(rows: int, after: int = 0):
    """A forward pre-hook: training micro-batches of more than ``rows`` rows run out of memory once ``after``
    training forwards have run (evaluation is left alone)."""
    calls = {"n": 0}

    def hook(module, args, kwargs):
        if module.training:
            calls["n"] += 1
            if calls["n"] > after and kwargs["input_ids"].shape[0] > rows:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return None

    return hook


def nan_after(n: int):
    """A forward hook: every training forward after the first ``n`` gives NaN logits."""
    calls = {"n": 0}

    def hook(module, args, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] > n:
                output.logits = output.logits * float("nan")
        return output

    return hook


def without_dropout(model: Path, out: Path) -> Path:
    """A copy of ``model`` without dropout: its random masks depend on the micro-batch shape."""
    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_auto_batch_size_halves_the_micro_batch_and_keeps_the_effective_batch(tmp_path, tiny_bert, sentiment_csv):
    model = without_dropout(tiny_bert, tmp_path / "model")
    _, reference = run(config(tmp_path / "plain", model, sentiment_csv))
    _, summary = run(config(tmp_path / "auto", model, sentiment_csv, autoBatchSize=True), oom_above(4, after=3))

    assert isinstance(summary, dict), summary
    assert summary["steps"] == 8
    (resize,) = summary["batch_resizes"]
    assert resize["step"] == 3 and (resize["batch_size"], resize["gradient_accumulation_steps"]) == (4, 2)
    assert resize["reason"].startswith("CUDA out of memory at batch 8, seq ")
    metrics = json.loads((tmp_path / "auto" / "out" / "metrics.json").read_text())
    assert metrics["batch_resizes"] == [resize]
    # Same data, same effective batch, same optimizer state: the run goes on as if nothing had happened.
    for mine, theirs in zip(summary["history"], reference["history"], strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-4)
    assert summary["validation"]["loss"] == pytest.approx(reference["validation"]["loss"], abs=1e-4)


def test_out_of_memory_without_auto_batch_size_fails_once_with_what_to_change(tmp_path, tiny_bert, sentiment_csv):
    _, error = run(config(tmp_path, tiny_bert, sentiment_csv), oom_above(4))
    assert isinstance(error, OutOfMemory), error
    message = str(error)
    assert message.startswith("CUDA out of memory at batch 8, seq ")
    assert "lower hyperparameters.batchSize (8) or raise gradientAccumulationSteps (1)" in message
    assert "gradientCheckpointing" in message and "autoBatchSize" in message
    assert not (tmp_path / "out" / "model").exists()


def test_the_trainer_exits_with_the_bad_input_code_and_the_reason(tmp_path, tiny_bert, sentiment_csv, monkeypatch):
    """The operator reads exit code 2 and the termination message: a permanent failure, not a retry."""
    from finetune_trainer import train

    path = tmp_path / "job.json"
    path.write_text(config(tmp_path, tiny_bert, sentiment_csv, maxNonFiniteSteps=2).to_json())
    log = tmp_path / "termination-log"
    log.touch()  # as the kubelet creates /dev/termination-log
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(log))
    original = Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.model.register_forward_hook(nan_after(0))

    monkeypatch.setattr(Trainer, "__init__", init)
    assert train.main(["--config", str(path)]) == 2
    text = log.read_text()
    assert "loss was NaN or infinite for 2 consecutive steps (up to step 2)" in text and "exitcode: 2" in text
    assert not (tmp_path / "out" / "model").exists()


def test_a_nan_loss_stops_the_run_after_the_configured_bad_steps(tmp_path, tiny_bert, sentiment_csv):
    trainer, error = run(config(tmp_path, tiny_bert, sentiment_csv, maxNonFiniteSteps=3), post_hook=nan_after(3))
    assert isinstance(error, TrainingDiverged) and "for 3 consecutive steps (up to step 6)" in str(error)
    # The non-finite steps were not applied: the weights stay finite, and the run stopped before saving a model.
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert [h["step"] for h in trainer.state.history] == [1, 2, 3, 4, 5]
    assert [math.isnan(h["loss"]) for h in trainer.state.history] == [False, False, False, True, True]
    assert not (tmp_path / "out" / "model").exists()
