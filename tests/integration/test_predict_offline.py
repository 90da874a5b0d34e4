"""`finetune predict` on a run's model folder, against the same model served by a real Triton: a run trained
with `dataset.cleaning` is exported and published, and then
- Triton's tokenizer model gives exactly the token ids training gave (the cleaning steps included),
- offline predict (texts, interactive lines, a whole file) gives the served labels, confidences and
  probabilities."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from finetune_operator import predict as P
from finetune_operator.cli import main as cli
from finetune_trainer import data as D
from finetune_trainer import export, preprocessing
from finetune_trainer.publish import publish
from tests.fixtures.models import write_csv
from tests.integration.test_trainer import train_in_process, write_config

pytestmark = pytest.mark.slow

CLEANING = ["strip_html", "strip_urls", "join_thousands", "strip_symbols", "normalize_whitespace"]
TEXTS = [
    "The movie was <b>WONDERFUL</b>!!! and the acting superb :-)",
    "a boring plot,   terrible acting... see https://example.com/review?id=1",
    "excellent #film @critic $5, worth 1,000 views",
    "it was a really dreadful film",
]
NAME = "cleaned"


@pytest.fixture(scope="module")
def run(tiny_bert, sentiment_csv, tmp_path_factory) -> Path:
    """A finished run directory (RUN_DIR/model, RUN_DIR/trainer-config.json) trained with cleaning steps."""
    root = tmp_path_factory.mktemp("cleaned-run")
    train, val = sentiment_csv
    config = write_config(root, tiny_bert, {"train": str(train), "validation": str(val), "cleaning": CLEANING},
                          hp={"maxSteps": 64})
    train_in_process(config)
    (root / "out" / "trainer-config.json").write_text(config.read_text())  # as `finetune run` leaves it
    return root / "out"


@pytest.fixture(scope="module")
def served(run, start_triton, tmp_path_factory):
    root = tmp_path_factory.mktemp("cleaned-serve")
    assert export.main(["--model", str(run / "model"), "--out", str(root / "export"), "--no-tensorrt"]) == 0
    repo = root / "repository"
    repo.mkdir()
    triton = start_triton(repo)
    publish(root / "export", repo.as_uri(), NAME, triton_url=f"http://{triton.http_url}", backend="python")
    return triton


def test_the_recorded_cleaning_is_what_triton_tokenizes(run, served):
    from transformers import AutoTokenizer

    prep = preprocessing.load(run / "model")
    assert list(prep.cleaning) == CLEANING
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    trained = D.tokenize(D.TextSplit(TEXTS, None, [0] * 4, "t"), tokenizer, prep, np.zeros(4, int)).input_ids
    raw = D.tokenize(D.TextSplit(TEXTS, None, [0] * 4, "t"), tokenizer, preprocessing.Preprocessing(prep.max_length),
                     np.zeros(4, int)).input_ids
    assert trained != raw  # the steps change these texts' tokens

    client = httpclient.InferenceServerClient(served.http_url)
    text = httpclient.InferInput("TEXT", [4, 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=object))
    result = client.infer(f"{NAME}_tokenizer", [text])
    ids, mask = result.as_numpy("input_ids"), result.as_numpy("attention_mask")
    assert [row[m == 1].tolist() for row, m in zip(ids, mask, strict=True)] == trained


def _served(served) -> list[P.Prediction]:
    return P.predict(served.http_url, NAME, TEXTS)


def _same(got: list[P.Prediction], want: list[P.Prediction]) -> None:
    assert [p.label for p in got] == [p.label for p in want]
    assert [p.text for p in got] == [p.text for p in want]
    for g, w in zip(got, want, strict=True):
        assert g.probabilities.keys() == w.probabilities.keys()
        np.testing.assert_allclose(list(g.probabilities.values()), list(w.probabilities.values()), atol=1e-4)
        assert g.confidence == pytest.approx(w.confidence, abs=1e-4)
        assert g.confidence == pytest.approx(max(g.probabilities.values()))


def test_offline_predict_equals_the_served_model(run, served):
    want = _served(served)
    assert {p.label for p in want} == {"negative", "positive"}  # a model that tells them apart
    _same(P.predict_offline(str(run / "model"), TEXTS), want)


def test_the_command_prints_label_confidence_and_every_probability(run, served, capsys):
    assert cli(["predict", "--model", str(run / "model"), *TEXTS]) == 0
    lines = capsys.readouterr().out.splitlines()
    want = _served(served)
    assert len(lines) == len(TEXTS)
    for line, p in zip(lines, want, strict=True):
        label, conf, probs, text = line.split("\t")
        assert (label, text) == (p.label, p.text)
        assert float(conf) == pytest.approx(p.confidence, abs=1e-3)
        shown = dict(kv.split("=") for kv in probs.split())
        assert {k: float(v) for k, v in shown.items()} == pytest.approx(p.probabilities, abs=1e-3)


def test_interactive_predict_reads_lines_until_q(run, served, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join([TEXTS[0], "", TEXTS[1], "q", TEXTS[2]]) + "\n"))
    assert cli(["predict", "--model", str(run / "model"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    _same([P.Prediction(r["text"], r["label"], r["probabilities"], r["confidence"]) for r in rows], _served(served)[:2])


def test_a_whole_file_is_scored_beside_it(run, served, tmp_path):
    # The run trained on column "text"; this file has other columns too, and keeps them.
    path = write_csv(tmp_path / "reviews.csv", [{"id": str(i), "text": t} for i, t in enumerate(TEXTS)])
    assert cli(["predict", "--model", str(run / "model"), "--file", str(path)]) == 0
    rows = list(csv.DictReader((tmp_path / "reviews.predictions.csv").open()))
    want = _served(served)
    assert [r["id"] for r in rows] == ["0", "1", "2", "3"] and [r["text"] for r in rows] == TEXTS
    assert [r["predicted_label"] for r in rows] == [p.label for p in want]
    for r, p in zip(rows, want, strict=True):
        assert float(r["confidence"]) == pytest.approx(p.confidence, abs=1e-4)
        assert float(r["prob_positive"]) == pytest.approx(p.probabilities["positive"], abs=1e-4)

    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    assert cli(["predict", "--url", served.http_url, "--model", NAME, "--file", str(jsonl)]) == 0
    scored = [json.loads(line) for line in (tmp_path / "reviews.predictions.jsonl").read_text().splitlines()]
    assert [s["prediction"]["label"] for s in scored] == [p.label for p in want]


def test_bad_input_is_named(run, tmp_path, capsys):
    path = write_csv(tmp_path / "other.csv", [{"review": "fine"}])
    assert cli(["predict", "--model", str(run / "model"), "--file", str(path)]) == 2
    assert "--text-column 'text' not in columns ['review']" in capsys.readouterr().err
    assert cli(["predict", "--model", str(tmp_path), "hello"]) == 2
    assert "no config.json" in capsys.readouterr().err
