"""The whole local path in one command: `finetune run` trains, exports, publishes into a model repository a
real Triton serves, and `finetune predict` answers with the same labels as the trained PyTorch model."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow

TEXTS = ["the movie was great and wonderful", "awful boring plot", "it was a really terrible story"]


def test_run_publishes_a_served_model_that_predicts_like_pytorch(tmp_path, tiny_bert, sentiment_csv, start_triton):
    from finetune_operator.cli import main

    repo = tmp_path / "repository"
    repo.mkdir()
    triton = start_triton(repo)
    train, val = sentiment_csv
    job = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "sentiment"},
        "spec": {
            "model": {"name": str(tiny_bert)},
            "dataset": {"train": str(train), "validation": str(val)},
            "hyperparameters": {"epochs": 3, "learningRate": 3e-3, "precision": "fp32"},
            "serving": {"repository": str(repo), "backend": "python", "tritonUrl": f"http://{triton.http_url}"},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    assert main(["run", str(path), "--runs", str(tmp_path / "runs")]) == 0
    run = next((tmp_path / "runs").iterdir())
    report = json.loads((run / "export" / "export_report.json").read_text())
    assert report["parity"]["argmax_agreement"] == 1.0

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["predict", "--url", triton.http_url, "--model", "sentiment", "--json", *TEXTS]) == 0
    served = [json.loads(line) for line in out.getvalue().splitlines()]

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    tok = AutoTokenizer.from_pretrained(run / "model")
    with torch.no_grad():
        probs = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits.softmax(-1)
    assert [s["label"] for s in served] == [model.config.id2label[int(i)] for i in probs.argmax(-1)]
    for s, p in zip(served, probs, strict=True):
        assert s["probabilities"]["positive"] == pytest.approx(float(p[1]), abs=1e-4)
