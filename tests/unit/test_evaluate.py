"""Evaluation metrics against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from finetune_trainer import evaluate as E


def test_single_label_metrics():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])  # predictions a, b, a
    m = E.single_label(logits, np.array([0, 1, 1]), ["a", "b"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[1, 0], [1, 1]]  # rows: truth, columns: prediction
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert m["per_class"]["b"]["precision"] == 1.0 and m["per_class"]["b"]["recall"] == 0.5
    assert m["f1_macro"] == pytest.approx(2 / 3)
    assert m["f1_micro"] == pytest.approx(m["accuracy"])  # single-label micro F1 is accuracy


def test_multi_label_metrics_at_threshold():
    logits = np.array([[2.0, -1.0], [1.0, 3.0]])  # predicted sets {x}, {x, y}
    m = E.multi_label(logits, np.array([[1, 0], [0, 1]]), ["x", "y"], threshold=0.5)
    assert m["subset_accuracy"] == 0.5
    assert m["per_class"]["x"]["precision"] == 0.5 and m["per_class"]["y"]["f1"] == 1.0
    assert m["f1_micro"] == pytest.approx(0.8)  # tp 2, fp 1, fn 0
    strict = E.multi_label(logits, np.array([[1, 0], [0, 1]]), ["x", "y"], threshold=0.8)
    assert strict["per_class"]["x"]["precision"] == 1.0  # sigmoid(1) = 0.73 is no longer a prediction
    assert strict["subset_accuracy"] == 1.0


def test_regression_metrics():
    m = E.regression(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 5.0]))
    assert m["mse"] == pytest.approx(2 / 3)
    assert m["mae"] == pytest.approx(2 / 3)
    assert m["pearson"] == pytest.approx(np.corrcoef([1, 2, 4], [1, 3, 5])[0, 1])
    assert m["spearman"] == pytest.approx(1.0)


def test_spearman_gives_ties_their_average_rank():
    # Ranks of x = [1, 2, 2, 3] are [1, 2.5, 2.5, 4], of y = [1, 1, 2, 3] are [1.5, 1.5, 3, 4]; their Pearson
    # correlation is 3.75 / sqrt(4.5 * 4.5) = 5/6, as scipy.stats.spearmanr reports (ranking ties by position
    # would give 1.0).
    assert list(E.average_ranks(np.array([3.0, 1.0, 2.0, 2.0]))) == [4.0, 1.0, 2.5, 2.5]
    m = E.regression(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0, 3.0]))
    assert m["spearman"] == pytest.approx(5 / 6)


def test_spearman_matches_scipy_on_scores_with_many_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    target = rng.integers(1, 6, size=200).astype(float)  # a 1-5 score: nearly every value is a tie
    pred = np.round(target + rng.normal(0, 1.0, size=200))  # rounded predictions tie too
    expected = stats.spearmanr(pred, target).statistic
    assert E.regression(pred, target)["spearman"] == pytest.approx(expected, abs=1e-12)
    assert list(E.average_ranks(target)) == pytest.approx(list(stats.rankdata(target)))


def test_best_metric_direction():
    assert E.improved(0.9, 0.8, "accuracy") and not E.improved(0.8, 0.9, "accuracy")
    assert E.improved(0.1, 0.2, "mse") and not E.improved(0.2, 0.1, "mse")
    assert not E.improved(0.805, 0.8, "f1_macro", min_delta=0.01)
    assert E.default_metric("regression") == "mse" and E.default_metric("single_label_classification") == "f1_macro"
