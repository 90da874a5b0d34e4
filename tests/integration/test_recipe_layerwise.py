"""Layer-wise learning rates, training only the top layer and the head's dropout with a real 2-process torchrun:
the model learns, the frozen layers stay as pretrained, a SIGKILLed run resumes to the uninterrupted run's
metrics, and the result exports to ONNX matching PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.integration import recipe_runs as R

pytestmark = pytest.mark.slow

STEPS, EVERY = 150, 10
HP = {"layerDecay": 0.8, "trainTopLayers": 1, "headDropout": 0.2, "learningRate": 2e-3, "headLearningRate": 4e-3,
      "maxSteps": STEPS, "evalSteps": STEPS, "batchSize": 8}
MARGIN = 0.3  # validation accuracy at least this far above always answering the majority label


@pytest.fixture(scope="module")
def encoder(finetuned_tiny, tmp_path_factory) -> Path:
    """A pretrained-looking encoder that already tells the words apart: the tiny BERT after a short full
    fine-tune, saved without its classifier (the new head starts untrained). Training only the top layer of a
    randomly initialised encoder, with its random embeddings frozen, would learn little."""
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path_factory.mktemp("encoder")
    AutoModel.from_pretrained(finetuned_tiny).save_pretrained(out)
    AutoTokenizer.from_pretrained(finetuned_tiny).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def layerwise_run(tmp_path_factory, encoder, sentiment_csv):
    d = tmp_path_factory.mktemp("layerwise")
    cfg = R.job(d, encoder, sentiment_csv, HP)
    return cfg, R.run(cfg)


def test_top_layer_and_head_learn_the_rest_stays_pretrained(layerwise_run, encoder, sentiment_csv):
    cfg, m = layerwise_run
    assert m["validation"]["accuracy"] >= R.majority_share(sentiment_csv[1]) + MARGIN, m["validation"]

    before = load_file(encoder / "model.safetensors")
    after = load_file(cfg.parent / "out" / "model" / "model.safetensors")
    unchanged = {k for k in before if torch.equal(before[k], after["bert." + k.removeprefix("bert.")])}
    assert all(k in unchanged for k in before if k.startswith(("embeddings.", "encoder.layer.0.")))
    assert not any(k in unchanged for k in before if k.startswith("encoder.layer.1.") and k.endswith("weight"))
    config = json.loads((cfg.parent / "out" / "model" / "config.json").read_text())
    assert config["classifier_dropout"] == 0.2

    # Checkpoints hold the trained parameters only: the top layer, the pooler and the classifier.
    root = cfg.parent / "checkpoints" / "default" / "resume"
    state = torch.load(sorted(root.glob("checkpoint-*/state.pt"))[-1], map_location="cpu", weights_only=False)
    assert {k.split(".")[1] if k.startswith("bert.") else k.split(".")[0] for k in state["model"]} == {
        "encoder", "pooler", "classifier"}
    assert all(".layer.1." in k for k in state["model"] if ".encoder." in k)
    # The one trained layer is the top one (learningRate, no decay below it is trained); the head has its own.
    lrs = sorted({g["initial_lr"] for g in state["optimizer"]["param_groups"]})
    assert lrs == pytest.approx([2e-3, 4e-3])


def test_layerwise_resumes_after_sigkill_to_the_same_metrics(tmp_path, encoder, sentiment_csv, layerwise_run):
    resumed = R.killed_and_resumed(R.job(tmp_path, encoder, sentiment_csv, HP), EVERY)
    R.assert_same_run(resumed, layerwise_run[1], EVERY)


def test_layerwise_export_matches_pytorch(layerwise_run, sentiment_csv, tmp_path):
    cfg, m = layerwise_run
    report = R.export_report(cfg.parent / "out" / "model", sentiment_csv[1], tmp_path / "export")
    assert report["evaluation"]["fp32"]["accuracy"] == pytest.approx(m["validation"]["accuracy"])
