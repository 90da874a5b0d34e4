"""What a run starts from is logged and kept in metrics.json: labels per split, token lengths before truncation
and the share truncated, trainable and total parameters, and the device."""

from __future__ import annotations

import collections
import csv
import json
import logging

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_run_stats_in_the_log_and_metrics(tmp_path, tiny_bert, sentiment_csv, caplog):
    from transformers import AutoTokenizer

    from finetune_trainer.config import TrainerConfig
    from finetune_trainer.loop import fit

    train, _ = sentiment_csv
    cfg = TrainerConfig.model_validate({
        "outputDir": str(tmp_path / "out"), "model": {"name": str(tiny_bert)},
        "dataset": {"train": str(train), "testSplit": 0.25, "validationSplit": 0.2},
        "hyperparameters": {"maxSteps": 2, "batchSize": 8, "maxSeqLength": 10, "precision": "fp32",
                            "freezeEncoder": True},
    })
    with caplog.at_level(logging.INFO, logger="finetune_trainer"):
        fit(cfg)
    stats = json.loads((tmp_path / "out" / "metrics.json").read_text())["run_stats"]

    with train.open(newline="") as f:
        rows = list(csv.DictReader(f))
    n = {role: s["rows"] for role, s in stats["splits"].items()}
    assert sum(n.values()) == len(rows) and abs(n["test"] - 0.25 * len(rows)) <= 1
    assert abs(n["validation"] - 0.2 * (len(rows) - n["test"])) <= 1
    for s in stats["splits"].values():
        assert sum(s["labels"].values()) == s["rows"]
    everything = collections.Counter(r["label"] for r in rows)
    assert {k: sum(s["labels"][k] for s in stats["splits"].values()) for k in everything} == dict(everything)

    lengths = np.array([len(ids) for ids in AutoTokenizer.from_pretrained(tiny_bert)([r["text"] for r in rows])
                        ["input_ids"]])
    measured = stats["splits"]
    overall = sum(s["token_lengths"]["truncated_share"] * s["rows"] for s in measured.values()) / len(rows)
    assert overall == pytest.approx(float((lengths > 10).mean()), abs=1e-9) and 0 < overall < 1
    assert max(s["token_lengths"]["max"] for s in measured.values()) == lengths.max()
    assert all(s["token_lengths"]["p50"] <= s["token_lengths"]["p95"] for s in measured.values())

    params = stats["parameters"]
    assert 0 < params["trainable"] < params["total"]  # the encoder is frozen: only the head trains
    assert stats["device"] == "cpu" and stats["world_size"] == 1 and "gpu" not in stats
    assert f"parameters: {params['trainable']:,} trainable of {params['total']:,}; device cpu x 1" in caplog.text
    assert f"train: {n['train']} rows" in caplog.text and "truncated" in caplog.text
