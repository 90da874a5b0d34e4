"""hyperparameters.lora with a real 2-process torchrun: adapters on query and value learn the task, checkpoints
hold only the trained parameters, a SIGKILLed run resumes to the uninterrupted run's metrics, and the merged
model exports to ONNX and serves in Triton like a plain fine-tune."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from tests.integration import recipe_runs as R

pytestmark = pytest.mark.slow

# Adapters on a randomly initialised encoder learn slower than a full fine-tune: more steps, a higher rate.
STEPS, EVERY, RANK = 300, 10, 16
HP = {"lora": {}, "learningRate": 1e-2, "maxSteps": STEPS, "evalSteps": STEPS, "batchSize": 8}
MARGIN = 0.2  # validation accuracy at least this far above always answering the majority label
TEXTS = ["the movie was wonderful", "a boring plot and terrible acting", "superb", "it was quite awful"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert, sentiment_csv):
    d = tmp_path_factory.mktemp("lora")
    cfg = R.job(d, tiny_bert, sentiment_csv, HP)
    return cfg, R.run(cfg)


def checkpoint_objects(cfg: Path) -> tuple[Path, dict[str, int]]:
    root = cfg.parent / "checkpoints" / "default" / "resume"
    latest = sorted(root.glob("checkpoint-*/manifest.json"))[-1]
    manifest = json.loads(latest.read_text())
    return latest.parent, {o["key"]: o["size"] for o in manifest["objects"]}


def test_lora_learns_training_only_adapters_and_head(lora_run, tiny_bert, sentiment_csv):
    cfg, m = lora_run
    baseline = R.majority_share(sentiment_csv[1])
    assert m["validation"]["accuracy"] >= baseline + MARGIN, (m["validation"], baseline)

    base = AutoConfig.from_pretrained(tiny_bert)
    h, layers = base.hidden_size, base.num_hidden_layers
    adapters = layers * 2 * (RANK * h + h * RANK)  # A and B on query and value of every layer
    head = h * h + h + h * 2 + 2  # pooler and classifier
    print(f"trainable parameters: {m['parameters']['trainable']} of {m['parameters']['total']}")
    assert m["parameters"]["trainable"] == adapters + head
    assert f"trainable parameters: {adapters + head} of" in R.logs(cfg)

    # The checkpoint holds the trained parameters only; the frozen encoder comes from the pretrained model.
    folder, sizes = checkpoint_objects(cfg)
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
    assert sum(t.numel() for t in state["model"].values()) == adapters + head
    assert all("lora_" in k or "classifier" in k or "pooler" in k for k in state["model"])
    full = (cfg.parent / "out" / "model" / "model.safetensors").stat().st_size
    print(f"checkpoint state: {sizes['state.pt']} bytes (model and optimizer); full model weights alone: {full}")
    assert sizes["state.pt"] < full


def test_published_model_is_the_merged_classifier(lora_run, sentiment_csv):
    cfg, m = lora_run
    model_dir = cfg.parent / "out" / "model"
    assert not (model_dir / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert not any("lora" in k for k in model.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    import csv

    with sentiment_csv[1].open(newline="") as f:
        rows = list(csv.DictReader(f))
    enc = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
    with torch.inference_mode():
        predicted = model(**enc).logits.argmax(1).tolist()
    accuracy = np.mean([model.config.id2label[p] == r["label"] for p, r in zip(predicted, rows, strict=True)])
    assert accuracy == pytest.approx(m["validation"]["accuracy"])  # the merged weights are the trained ones


def test_lora_resumes_after_sigkill_to_the_same_metrics(tmp_path, tiny_bert, sentiment_csv, lora_run):
    resumed = R.killed_and_resumed(R.job(tmp_path, tiny_bert, sentiment_csv, HP), EVERY)
    R.assert_same_run(resumed, lora_run[1], EVERY)


def test_merged_export_matches_pytorch_and_serves_in_triton(lora_run, sentiment_csv, start_triton, tmp_path):
    from finetune_trainer.publish import publish

    cfg, _ = lora_run
    model_dir = cfg.parent / "out" / "model"
    R.export_report(model_dir, sentiment_csv[1], tmp_path / "export")
    repo = tmp_path / "repository"
    repo.mkdir()
    server = start_triton(repo)
    published = publish(tmp_path / "export", repo.as_uri(), "lora", triton_url=f"http://{server.http_url}",
                        backend="python")
    assert published.ready

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = AutoTokenizer.from_pretrained(model_dir)(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = model(**enc).logits.numpy()
    client = httpclient.InferenceServerClient(server.http_url)
    inputs = []
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        t = httpclient.InferInput(name, list(enc[name].shape), "INT64")
        t.set_data_from_numpy(enc[name].numpy().astype(np.int64))
        inputs.append(t)
    got = client.infer("lora", inputs).as_numpy("logits")
    np.testing.assert_allclose(got, expected, atol=1e-4)
