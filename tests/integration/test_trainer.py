"""The trainer as a user runs it: real torchrun processes on a tiny BERT, then the saved model reloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.models import multilabel_rows, pair_rows, score_rows, write_csv

FAST = {"learningRate": 3e-3, "batchSize": 16, "logEverySteps": 2, "warmupRatio": 0.1, "precision": "fp32"}


def write_config(tmp: Path, model: Path, dataset: dict, *, hp: dict | None = None, task: dict | None = None,
                 **extra) -> Path:
    cfg = {
        "jobName": "test",
        "outputDir": str(tmp / "out"),
        "model": {"name": str(model)},
        "dataset": dataset,
        "task": task or {},
        "hyperparameters": {**FAST, **(hp or {})},
        **extra,
    }
    path = tmp / "job.json"
    path.write_text(json.dumps(cfg))
    return path


def torchrun(config: Path, nproc: int, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "finetune_trainer", "train", "--config", str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def train_in_process(config: Path) -> dict:
    """One rank, in this process: the same entry point torchrun calls."""
    from finetune_trainer.train import main

    assert main(["--config", str(config)]) == 0
    return json.loads((config.parent / "out" / "metrics.json").read_text())


@pytest.mark.slow
def test_two_process_ddp_learns_and_saves_a_model_that_reloads(tmp_path, tiny_bert, sentiment_csv):
    train, val = sentiment_csv
    config = write_config(tmp_path, tiny_bert, {"train": str(train), "validation": str(val)}, hp={"epochs": 4})
    proc = torchrun(config, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())

    assert metrics["world_size"] == 2
    losses = [h["loss"] for h in metrics["history"]]
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses
    assert len(set(metrics["replica_checksums"])) == 1, "DDP replicas diverged"
    assert metrics["validation"]["accuracy"] >= 0.9
    assert (out / "training_curve.png").stat().st_size > 10_000

    # The saved model is a plain Hugging Face folder: reload it and predict the validation set again.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = out / "model"
    assert (model_dir / "model.safetensors").exists()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    import csv

    rows = list(csv.DictReader(val.open()))
    with torch.no_grad():
        enc = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
        pred = model(**enc).logits.argmax(-1).tolist()
    truth = [model.config.label2id[r["label"]] for r in rows]
    cm = np.zeros((2, 2), dtype=int)
    np.add.at(cm, (truth, pred), 1)
    assert cm.tolist() == metrics["validation"]["confusion_matrix"]


@pytest.mark.parametrize("grouped", [False, True], ids=["random-batches", "grouped-by-length"])
def test_same_seed_same_metrics(tmp_path, tiny_bert, sentiment_csv, grouped):
    train, val = sentiment_csv
    results = []
    for run in ("a", "b"):
        d = tmp_path / run
        d.mkdir()
        hp = {"maxSteps": 12, "groupByLength": grouped}
        config = write_config(d, tiny_bert, {"train": str(train), "validation": str(val)}, hp=hp)
        results.append(train_in_process(config))
    a, b = results
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["validation"] == b["validation"]


def test_grouping_by_length_still_learns(tmp_path, tiny_bert, sentiment_csv):
    """Batches of similar length (sorted within groups) must not bias what is learned."""
    train, val = sentiment_csv
    hp = {"epochs": 4, "groupByLength": True}
    m = train_in_process(write_config(tmp_path, tiny_bert, {"train": str(train), "validation": str(val)}, hp=hp))
    assert m["validation"]["accuracy"] >= 0.9, m["validation"]


def test_regression_scores(tmp_path, tiny_bert):
    train = write_csv(tmp_path / "scores.csv", score_rows(256, seed=5))
    config = write_config(
        tmp_path, tiny_bert, {"train": str(train), "labelColumn": "score", "validationSplit": 0.25},
        task={"type": "regression"}, hp={"epochs": 6},
    )
    m = train_in_process(config)
    v = m["validation"]
    assert {"mse", "mae", "pearson", "spearman"} <= set(v)
    assert v["pearson"] > 0.8, v
    assert m["best_metric"]["name"] == "mse"


def test_multi_label(tmp_path, tiny_bert):
    train = write_csv(tmp_path / "topics.csv", multilabel_rows(300, seed=6))
    config = write_config(
        tmp_path, tiny_bert, {"train": str(train), "labelColumn": "labels", "validationSplit": 0.2},
        task={"type": "multi_label_classification"}, hp={"epochs": 30},
    )
    m = train_in_process(config)
    assert m["labels"] == ["food", "money", "sport"]
    v = m["validation"]
    # Predicting every label for every text already scores f1_micro 0.8 here; subset accuracy tells learning apart.
    assert v["f1_micro"] > 0.9 and v["f1_macro"] > 0.9 and v["subset_accuracy"] > 0.7, v
    assert set(v["per_class"]) == {"food", "money", "sport"}


@pytest.mark.slow
def test_sentence_pairs_are_learned_from_the_second_text(tmp_path, tiny_bert):
    """The label is the second text's sentiment: reading the pair learns it, the first text alone cannot."""
    train = write_csv(tmp_path / "pairs.csv", pair_rows(800, seed=7))
    val = write_csv(tmp_path / "pairs-val.csv", pair_rows(200, seed=8))
    hp = {"maxSteps": 250, "batchSize": 32}
    accuracy = {}
    for name, pair in (("pair", {"textPairColumn": "hypothesis"}), ("first-only", {})):
        run = tmp_path / name
        run.mkdir()
        dataset = {"train": str(train), "validation": str(val), "textColumn": "premise", **pair}
        m = train_in_process(write_config(run, tiny_bert, dataset, hp=hp))
        assert m["labels"] == ["negative", "positive"]
        accuracy[name] = m["validation"]["accuracy"]
    assert accuracy["pair"] >= 0.9 and accuracy["first-only"] <= 0.65, accuracy
    # Both segments reach the model: token type ids 1 mark the second text.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "pair" / "out" / "model")
    assert 1 in tok("a b", "c d")["token_type_ids"]


def _run_with_stderr_on_a_terminal(config: Path) -> str:
    """Run one trainer process whose stderr is a pseudo-terminal, as in an interactive shell."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "finetune_trainer", "train", "--config", str(config)],
                            stderr=follower, stdout=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "160"})
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(leader)
    assert proc.returncode == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(tmp_path, tiny_bert, sentiment_csv):
    train, val = sentiment_csv
    config = write_config(tmp_path, tiny_bert, {"train": str(train), "validation": str(val)}, hp={"maxSteps": 6})
    screen = _run_with_stderr_on_a_terminal(config)
    assert "6/6" in screen and "loss=" in screen and "samples_s=" in screen and "lr=" in screen
    assert "\r" in screen, "a terminal gets a redrawn bar"

    proc = subprocess.run([sys.executable, "-m", "finetune_trainer", "train", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    lines = [line for line in proc.stderr.splitlines() if "step=6/6" in line]
    assert lines and "loss=" in lines[0] and "samples_per_second=" in lines[0] and "eta=" in lines[0]
    assert "\r" not in proc.stderr
