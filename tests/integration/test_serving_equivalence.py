"""The served model sees what the trained model saw: for each truncation mode and a text longer than the limit,
Triton's text-in ensemble (HTTP and gRPC), `finetune predict` and PyTorch on the trainer's evaluation path give
the same labels and probabilities; a model folder without a recorded definition serves the old way, warned."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetune_trainer import data as D
from finetune_trainer import export, export_inputs, preprocessing
from finetune_trainer.publish import publish

pytestmark = pytest.mark.slow

# Positive words first, negative words last: head and tail truncation see opposite halves.
LONG = "great wonderful excellent superb " + "the movie plot and a story " * 12 + "awful terrible boring dreadful"
TEXTS = [LONG, "it was a really great film", "awful boring plot"]
MODES = {"head": 0, "tail": 0, "head_tail": 5}


def pytorch_probabilities(model_dir: Path, texts: list[str]) -> np.ndarray:
    """Softmax of the logits the trainer's evaluation computes: its tokenize, its collate, the saved model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    prep = preprocessing.load(model_dir)
    data = D.tokenize(D.TextSplit(texts, None, [0] * len(texts), "texts"), tokenizer, prep, np.zeros(len(texts), int))
    batch = D.Collator(tokenizer.pad_token_id)(data, list(range(len(texts))))
    batch.pop("labels")
    with torch.no_grad():
        return model(**batch).logits.softmax(-1).numpy()


@pytest.fixture(scope="module")
def served(finetuned_tiny, tmp_path_factory, start_triton):
    """One model folder per truncation mode (max 20 tokens), exported and published into one running Triton."""
    root = tmp_path_factory.mktemp("equivalence")
    repo = root / "repository"
    repo.mkdir()
    triton = start_triton(repo)
    folders = {}
    for mode, head in MODES.items():
        folder = root / mode
        shutil.copytree(finetuned_tiny, folder)
        preprocessing.Preprocessing(20, mode, head or 64).save(folder)
        assert export.main(["--model", str(folder), "--out", str(root / f"{mode}-export")]) == 0
        publish(root / f"{mode}-export", repo.as_uri(), f"m_{mode}", triton_url=f"http://{triton.http_url}",
                backend="python")
        folders[mode] = folder
    return triton, folders


def finetune_predict_cli(url: str, model: str, texts: list[str], grpc: bool) -> list[dict]:
    argv = [str(Path(sys.executable).with_name("finetune")), "predict", "--url", url, "--model", model, "--json"]
    done = subprocess.run([*argv, *(["--grpc"] if grpc else []), *texts], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("mode", list(MODES))
def test_triton_http_grpc_and_predict_agree_with_the_evaluation_path(served, mode):
    from finetune_operator.predict import predict

    triton, folders = served
    expected = pytorch_probabilities(folders[mode], TEXTS)
    labels = ["negative", "positive"]
    answers = {
        "http": [(p.label, p.probabilities) for p in predict(triton.http_url, f"m_{mode}", TEXTS)],
        "grpc": [(p.label, p.probabilities) for p in predict(triton.grpc_url, f"m_{mode}", TEXTS, grpc=True)],
        "cli-http": [(r["label"], r["probabilities"]) for r in finetune_predict_cli(triton.http_url, f"m_{mode}",
                                                                                    TEXTS, grpc=False)],
        "cli-grpc": [(r["label"], r["probabilities"]) for r in finetune_predict_cli(triton.grpc_url, f"m_{mode}",
                                                                                    TEXTS, grpc=True)],
    }
    for path, rows in answers.items():
        assert [label for label, _ in rows] == [labels[i] for i in expected.argmax(1)], path
        got = np.array([[probs[n] for n in labels] for _, probs in rows])
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=path)


def test_the_modes_really_see_different_tokens(served):
    """The long text's probabilities depend on the mode: the comparison above would catch a served model that
    ignored the recorded truncation."""
    _, folders = served
    first = {mode: pytorch_probabilities(folder, [LONG])[0] for mode, folder in folders.items()}
    assert abs(first["head"][1] - first["tail"][1]) > 1e-2
    assert abs(first["head_tail"][1] - first["head"][1]) > 1e-3


def test_a_model_without_a_recorded_definition_exports_the_old_way_with_a_warning(finetuned_tiny, tmp_path, caplog):
    assert not (finetuned_tiny / preprocessing.FILE).exists()
    with caplog.at_level(logging.WARNING, logger=export_inputs.__name__):
        assert export.main(["--model", str(finetuned_tiny), "--out", str(tmp_path / "export"), "--no-tensorrt"]) == 0
    assert f"no {preprocessing.FILE}" in caplog.text and "first 128 tokens" in caplog.text
    assert preprocessing.load(tmp_path / "export") == preprocessing.legacy(128)


def test_an_old_served_version_without_the_definition_keeps_serving(served, finetuned_tiny, tmp_path):
    """A version published before preprocessing.json existed: Triton's tokenizer keeps the first
    max_sequence_length tokens (its config's parameter), and logs why."""
    from finetune_operator.predict import predict

    triton, _ = served
    out = tmp_path / "export"
    assert export.main(["--model", str(finetuned_tiny), "--out", str(out), "--max-sequence-length", "20"]) == 0
    (out / preprocessing.FILE).unlink()
    publish(out, triton.repository.as_uri(), "m_old", triton_url=f"http://{triton.http_url}", backend="python")
    legacy_dir = tmp_path / "legacy"
    shutil.copytree(finetuned_tiny, legacy_dir)
    preprocessing.legacy(20).save(legacy_dir)
    expected = pytorch_probabilities(legacy_dir, TEXTS)
    got = np.array([[p.probabilities[n] for n in ("negative", "positive")] for p in
                    predict(triton.http_url, "m_old", TEXTS)])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert "m_old_tokenizer version 1: no preprocessing.json" in triton.log_tail(400)
