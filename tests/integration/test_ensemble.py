"""spec.ensemble end to end: `finetune run` trains three seeds (two torchrun processes each), publishes one
model, and a real Triton serves it with probabilities equal to the mean of its members' (PyTorch) probabilities;
its metrics.json holds the ensemble's own held-out metrics and each member's. Bad members fail before training."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

from tests.fixtures.models import make_tiny_bert

FINETUNE = str(Path(sys.executable).with_name("finetune"))
TEXTS = ["the movie was wonderful and the acting superb", "a boring plot and terrible acting", "excellent",
         "it was a really dreadful film", "quite a delightful story and a fantastic film", "the plot"]


def job_file(folder: Path, model: Path, train: Path, val: Path, ensemble: dict, **spec) -> Path:
    job = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "reviews"},
        "spec": {
            "model": {"name": str(model)},
            "dataset": {"train": str(train), "validation": str(val)},
            "hyperparameters": {"maxSteps": 12, "batchSize": 16, "learningRate": 3e-3, "precision": "fp32",
                                "maxSeqLength": 32},
            "ensemble": ensemble,
            **spec,
        },
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    return folder / "job.yaml"


def finetune_run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FINETUNE, "run", "job.yaml", "--runs", "runs", *args], cwd=folder, capture_output=True,
                          text=True, timeout=1500)  # fmt: skip


def member_probabilities(run: Path, texts: list[str]) -> list[np.ndarray]:
    out = []
    for k in range(3):
        folder = run / "members" / str(k) / "model"
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        enc = AutoTokenizer.from_pretrained(folder)(texts, padding=True, truncation=True, max_length=32,
                                                    return_tensors="pt")
        with torch.inference_mode():
            out.append(model(**enc).logits.softmax(-1).numpy())
    return out


@pytest.fixture(scope="module")
def ensemble_run(tiny_bert, sentiment_csv, tmp_path_factory) -> tuple[Path, Path]:
    """Three seeds trained, combined and published into ``models`` (the run folder and the repository)."""
    folder = tmp_path_factory.mktemp("ensemble")
    job_file(folder, tiny_bert, *sentiment_csv, {"count": 3},
             serving={"repository": "models", "backend": "python"})
    done = finetune_run(folder, "--nproc", "2")
    assert done.returncode == 0, done.stderr[-4000:]
    (run,) = (folder / "runs").iterdir()
    return run, folder / "models"


@pytest.mark.slow
def test_one_served_model_whose_probabilities_are_the_mean_of_its_members(ensemble_run, start_triton):
    run, repo = ensemble_run
    assert sorted(p.name for p in repo.iterdir()) == ["reviews", "reviews_postprocess", "reviews_text",
                                                      "reviews_tokenizer"]  # fmt: skip
    assert sorted(p.name for p in (repo / "reviews").iterdir() if p.name.isdigit()) == ["1"]  # one version
    members = member_probabilities(run, TEXTS)
    assert max(np.abs(members[0] - m).max() for m in members[1:]) > 1e-3  # the seeds trained different members

    server = start_triton(repo)
    client = httpclient.InferenceServerClient(server.http_url)
    for model in ("reviews_tokenizer", "reviews", "reviews_postprocess", "reviews_text"):  # explicit model control
        client.load_model(model)
    assert client.get_model_metadata("reviews")["versions"] == ["1"]
    text = httpclient.InferInput("TEXT", [len(TEXTS), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=object))
    result = client.infer("reviews_text", [text], outputs=[httpclient.InferRequestedOutput(o)
                                                            for o in ("LABEL", "PROBABILITIES")])  # fmt: skip
    served = result.as_numpy("PROBABILITIES")
    mean = np.mean(members, axis=0)
    np.testing.assert_allclose(served, mean, atol=1e-5)
    labels = ["negative", "positive"]
    assert [x.decode() for x in result.as_numpy("LABEL").reshape(-1)] == [labels[i] for i in mean.argmax(1)]


@pytest.mark.slow
def test_metrics_json_has_the_ensembles_own_validation_metrics_and_each_members(ensemble_run, sentiment_csv):
    run, _ = ensemble_run
    metrics = json.loads((run / "metrics.json").read_text())
    with sentiment_csv[1].open(newline="") as f:
        rows = list(csv.DictReader(f))
    truth = np.array([["negative", "positive"].index(r["label"]) for r in rows])
    members = member_probabilities(run, [r["text"] for r in rows])
    assert metrics["method"] == "mean" and [m["index"] for m in metrics["members"]] == [0, 1, 2]
    expected = (np.mean(members, axis=0).argmax(1) == truth).mean()
    assert metrics["validation"]["accuracy"] == pytest.approx(expected)
    for entry, probs in zip(metrics["members"], members, strict=True):
        assert entry["metrics"]["validation"]["accuracy"] == pytest.approx((probs.argmax(1) == truth).mean())
    report = json.loads((run / "export" / "export_report.json").read_text())
    assert report["parity"]["passed"] and report["parity"]["max_abs_probability_diff"] <= 1e-5
    for k in range(3):  # each member was exported and parity checked against PyTorch on its own
        assert json.loads((run / "members" / str(k) / "export" / "export_report.json").read_text())["parity"]["passed"]


def test_a_member_model_with_other_labels_fails_before_training(tiny_bert, sentiment_csv, tmp_path):
    other = tmp_path / "three-labels"
    names = {0: "a", 1: "b", 2: "c"}
    BertForSequenceClassification.from_pretrained(tiny_bert, num_labels=3, id2label=names,
                                                  label2id={v: k for k, v in names.items()}).save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(other)
    members = [{"seed": 1}, {"seed": 2, "model": {"name": str(other)}}]
    job_file(tmp_path, tiny_bert, *sentiment_csv, {"members": members})
    done = finetune_run(tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "spec.ensemble.members[1].model" in done.stderr and "['a', 'b', 'c']" in done.stderr, done.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "members" / "0" / "model").exists()  # nothing trained


def test_a_member_model_with_another_tokenizer_fails_before_training(tiny_bert, sentiment_csv, tmp_path):
    other = make_tiny_bert(tmp_path / "other-vocab", ["completely different words here"])
    job_file(tmp_path, tiny_bert, *sentiment_csv, {"members": [{}, {"model": {"name": str(other)}}]})
    done = finetune_run(tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "spec.ensemble.members[1].model" in done.stderr and "different tokenizer" in done.stderr, done.stderr
