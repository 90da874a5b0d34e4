"""The combined ONNX graph: for every task and method, what the served postprocess makes of its output equals
the combination of the members' own outputs; members with different inputs share the graph's inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from finetune_trainer import ensemble_graph
from finetune_trainer.ensemble import served_probabilities

VOCAB, LABELS = 30, 3


class Tiny(torch.nn.Module):
    """Mean token embedding -> logits; with ``types`` it also reads token_type_ids."""

    def __init__(self, seed: int, outputs: int, types: bool):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.head, self.types = torch.nn.Embedding(VOCAB, 8), torch.nn.Linear(8, outputs), types
        self.type_emb = torch.nn.Embedding(2, 8)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        x = self.emb(input_ids) + (self.type_emb(token_type_ids) if self.types else 0)
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((x * mask).sum(1) / mask.sum(1)) * 4


def export(model: Tiny, path: Path) -> onnx.ModelProto:
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if model.types else [])
    sample = tuple(torch.ones(2, 5, dtype=torch.long) for _ in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    torch.onnx.export(model, sample, str(path), input_names=names, output_names=["logits"], dynamic_axes=axes,
                      opset_version=17, dynamo=False)  # fmt: skip
    return onnx.load(path)


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(["logits"], {k: v for k, v in feed.items() if k in names})[0]


@pytest.mark.parametrize(
    ("task", "method", "outputs"),
    [("single_label_classification", "mean", LABELS), ("single_label_classification", "vote", LABELS),
     ("multi_label_classification", "mean", LABELS), ("regression", "mean", 1)],
)  # fmt: skip
def test_served_output_is_the_combination_of_the_members(tmp_path, task, method, outputs):
    members = [export(Tiny(seed, outputs, types=seed == 1), tmp_path / f"m{seed}.onnx") for seed in range(3)]
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(0, VOCAB, (16, 7)), "attention_mask": np.ones((16, 7), dtype=np.int64),
            "token_type_ids": rng.integers(0, 2, (16, 7))}  # fmt: skip
    combined = ensemble_graph.combine(members, list(feed), task, method, outputs)
    assert [i.name for i in combined.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    each = [run(m, feed) for m in members]
    expected = ensemble_graph.expected(each, task, method)
    served = served_probabilities(run(combined, feed), task)
    np.testing.assert_allclose(served, expected, atol=1e-6)
    assert np.isfinite(run(combined, feed)).all()
    if method == "vote":
        assert set(np.unique(expected * 3).round(6)) <= {0.0, 1.0, 2.0, 3.0}  # shares of three votes
    elif task != "regression":
        assert np.abs(expected - served_probabilities(each[0], task)).max() > 1e-3  # not just one member


def test_members_of_different_opsets_are_refused(tmp_path):
    a = export(Tiny(0, LABELS, False), tmp_path / "a.onnx")
    b = export(Tiny(1, LABELS, False), tmp_path / "b.onnx")
    b.opset_import[0].version = 16
    with pytest.raises(ValueError, match="different opsets"):
        ensemble_graph.combine([a, b], ["input_ids", "attention_mask"], "single_label_classification", "mean", 3)
