"""Logits to labels and probabilities, the one definition the Triton postprocess and offline predict share."""

from __future__ import annotations

import numpy as np
import pytest

from finetune_trainer.postprocessing import confidence, postprocess

LABELS = ["neg", "neu", "pos"]


def test_single_label_is_softmax_and_argmax():
    logits = np.array([[0.0, 0.0, np.log(2.0)], [3.0, 1.0, -1.0]], dtype=np.float32)
    names, probs = postprocess(logits, LABELS, "single_label_classification")
    assert names == ["pos", "neg"]
    np.testing.assert_allclose(probs[0], [0.25, 0.25, 0.5], atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert probs.dtype == np.float32
    assert confidence(probs, "single_label_classification") == pytest.approx([0.5, probs[1, 0]])


def test_large_logits_do_not_overflow():
    _, probs = postprocess(np.array([[1000.0, 0.0, -1000.0]]), LABELS, "single_label_classification")
    np.testing.assert_allclose(probs, [[1.0, 0.0, 0.0]], atol=1e-6)


def test_multi_label_is_sigmoid_and_the_threshold():
    logits = np.array([[2.0, 0.0, -2.0], [-3.0, -3.0, -3.0]])
    names, probs = postprocess(logits, LABELS, "multi_label_classification", threshold=0.5)
    assert names == ["neg,neu", ""]  # 0.5 itself counts; no label above it is an empty label
    np.testing.assert_allclose(probs[0], 1 / (1 + np.exp(-logits[0])), atol=1e-6)
    assert postprocess(logits, LABELS, "multi_label_classification", threshold=0.9)[0] == ["", ""]


def test_regression_reports_the_score():
    names, scores = postprocess(np.array([[3.25], [-0.5]]), ["score"], "regression")
    assert names == ["3.25", "-0.5"]
    np.testing.assert_allclose(scores, [[3.25], [-0.5]])
    assert confidence(scores, "regression") == [None, None]
