"""ONNX export of a fine-tuned tiny BERT: files, parity with PyTorch, variants' accuracy, clear failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finetune_trainer.export import main

pytestmark = pytest.mark.slow  # fine-tunes and exports a tiny model (about 15 s)

TEXTS = [
    "the movie was wonderful",
    "a boring plot and really poor acting and the story was a dreadful mess",
    "superb",
    "it was quite awful",
    "the film and the plot and the acting were all brilliant and the story delightful",
]


def torch_logits(model_dir: Path, texts: list[str]) -> np.ndarray:
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = AutoTokenizer.from_pretrained(model_dir)(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits.numpy()


def test_export_writes_model_tokenizer_labels_and_report(tiny_export: Path):
    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json", "labels.txt", "export_report.json"):
        assert (tiny_export / name).is_file(), name
    assert (tiny_export / "labels.txt").read_text().split() == ["negative", "positive"]
    report = json.loads((tiny_export / "export_report.json").read_text())
    assert report["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert report["parity"]["passed"] and report["parity"]["argmax_agreement"] == 1.0
    assert report["parity"]["max_abs_diff"] < 1e-4
    assert report["optimization"]["fused_operators"]["Attention"] == 2  # eager attention export fuses
    assert report["tensorrt"]["status"] in ("done", "skipped")
    if report["tensorrt"]["status"] == "skipped":
        assert report["tensorrt"]["reason"]
    # int8 is 4x smaller and the eval metrics of every variant are reported next to PyTorch's.
    assert report["files"]["model.int8.onnx"]["bytes"] < report["files"]["model.onnx"]["bytes"] / 2
    evaluation = report["evaluation"]
    assert evaluation["examples"] == 64
    assert evaluation["pytorch"]["accuracy"] >= 0.9  # the fine-tune learned something
    assert evaluation["fp32"]["accuracy"] == evaluation["pytorch"]["accuracy"]
    assert abs(evaluation["int8_accuracy_drop_points"]) <= 5.0


def test_onnx_graph_has_dynamic_axes_and_matches_pytorch(tiny_export: Path, finetuned_tiny: Path):
    graph = onnx.load(str(tiny_export / "model.onnx")).graph
    for tensor in graph.input:
        dims = tensor.type.tensor_type.shape.dim
        assert tensor.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in dims] == ["batch", "sequence"], tensor.name
    assert [o.name for o in graph.output] == ["logits"]
    session = ort.InferenceSession(str(tiny_export / "model.onnx"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    expected = torch_logits(finetuned_tiny, TEXTS)
    for batch in (TEXTS, TEXTS[:1], TEXTS[2:]):  # other batch sizes and lengths than at export
        enc = tokenizer(batch, padding=True, return_tensors="np")
        got = session.run(["logits"], {k: v.astype(np.int64) for k, v in enc.items()})[0]
        np.testing.assert_allclose(got, expected[TEXTS.index(batch[0]) :][: len(batch)], atol=1e-4)


def test_broken_parity_fails_with_a_clear_error(finetuned_tiny: Path, tmp_path: Path, capsys):
    # No float graph reproduces PyTorch to 1e-12: the check must refuse the export.
    assert main(["--model", str(finetuned_tiny), "--out", str(tmp_path), "--tolerance", "1e-12"]) == 2
    err = capsys.readouterr().err
    assert "does not match PyTorch" in err and "tolerance 1e-12" in err
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["parity"]["passed"] is False


def test_bad_eval_column_is_named(finetuned_tiny: Path, sentiment_csv, tmp_path: Path, capsys):
    argv = ["--model", str(finetuned_tiny), "--out", str(tmp_path), "--eval-file", str(sentiment_csv[1])]
    assert main([*argv, "--label-column", "sentiment"]) == 2
    assert "'sentiment' not in columns ['text', 'label']" in capsys.readouterr().err


def test_not_a_model_folder(tmp_path: Path, capsys):
    assert main(["--model", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_model_without_token_type_ids_exports_two_inputs(tiny_bert: Path, tmp_path: Path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=AutoTokenizer.from_pretrained(tiny_bert).vocab_size,
        dim=32,
        n_layers=1,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=64,
        num_labels=3,
    )
    torch.manual_seed(0)
    DistilBertForSequenceClassification(config).save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "model")
    assert main(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "export_report.json").read_text())
    assert report["inputs"] == ["input_ids", "attention_mask"]
    assert report["labels"] == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert report["max_sequence_length"] == 64
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]


def test_default_export_serves_the_fused_graph_that_passed_parity(finetuned_tiny: Path, tmp_path: Path):
    # A job's export step passes no --optimize: what it publishes must still be the fast graph.
    assert main(["--model", str(finetuned_tiny), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["optimization"]["status"] == "done"
    assert report["parity"]["checks"]["optimized"]["max_abs_diff"] <= report["parity"]["tolerance"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert "Attention" in ops and "SkipLayerNormalization" in ops, ops
    assert main(["--model", str(finetuned_tiny), "--out", str(tmp_path / "plain"), "--no-optimize"]) == 0
    plain = {n.op_type for n in onnx.load(str(tmp_path / "plain" / "model.onnx")).graph.node}
    assert "Attention" not in plain


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-node refusal")
def test_tensorrt_required_on_a_cpu_node_fails_at_once_saying_it_needs_a_gpu(finetuned_tiny: Path, tmp_path: Path,
                                                                              capsys):
    assert main(["--model", str(finetuned_tiny), "--out", str(tmp_path / "out"), "--require-tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "serving.backend tensorrt" in err and "TensorRT needs a GPU" in err
    assert not (tmp_path / "out").exists()  # refused before any export work
