"""spec.distillation with a real 2-process torchrun: a smaller student with its own tokenizer, trained on noisy
labels, learns more with the teacher than without it; cached and on-the-fly teacher logits train the same
model; a SIGKILLed run resumes to the uninterrupted run's metrics; the student exports to ONNX matching
PyTorch; a teacher with other labels is refused before any worker starts."""

from __future__ import annotations

import random

import pytest

from tests.fixtures.models import NEGATIVE, POSITIVE, make_tiny_bert, sentiment_rows, write_csv
from tests.integration import recipe_runs as R
from tests.integration.test_run_errors import job_file, run_cli

pytestmark = pytest.mark.slow

STEPS, EVERY, NOISE = 150, 10, 0.4
HP = {"learningRate": 2e-3, "maxSteps": STEPS, "evalSteps": STEPS, "batchSize": 8}
MARGIN = 0.1  # the distilled student's validation accuracy at least this far above the student without teacher


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """Half the teacher's width, one layer, and a tokenizer that knows only the sentiment words (the rest it
    spells letter by letter): a different tokenizer from the teacher's."""
    return make_tiny_bert(tmp_path_factory.mktemp("student"), [" ".join(POSITIVE + NEGATIVE)], hidden=32, layers=1)


@pytest.fixture(scope="module")
def noisy_data(tmp_path_factory, sentiment_csv):
    """The teacher's training rows with 40% of the labels flipped (weak labels), and the clean validation set."""
    rng = random.Random(7)
    flip = {"positive": "negative", "negative": "positive"}
    rows = [{**r, "label": flip[r["label"]] if rng.random() < NOISE else r["label"]}
            for r in sentiment_rows(256, seed=2)]
    return write_csv(tmp_path_factory.mktemp("noisy") / "train.csv", rows), sentiment_csv[1]


def distillation(teacher, **extra) -> dict:
    return {"distillation": {"teacher": {"name": str(teacher)}, "temperature": 2.0, "crossEntropyWeight": 0.3,
                             "klWeight": 0.7, **extra}}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, student, noisy_data, finetuned_tiny):
    d = tmp_path_factory.mktemp("distilled")
    cfg = R.job(d, student, noisy_data, HP, **distillation(finetuned_tiny))
    return cfg, R.run(cfg)


def test_student_learns_more_with_the_teacher(tmp_path, distilled, student, noisy_data):
    cfg, with_teacher = distilled
    alone = R.run(R.job(tmp_path, student, noisy_data, HP))
    print(f"student validation accuracy: with teacher {with_teacher['validation']['accuracy']:.3f}, "
          f"without {alone['validation']['accuracy']:.3f}")
    assert with_teacher["validation"]["accuracy"] >= alone["validation"]["accuracy"] + MARGIN
    assert with_teacher["validation"]["accuracy"] >= R.majority_share(noisy_data[1]) + 0.3
    assert "teacher logits computed for 256 training rows" in R.logs(cfg)


def test_on_the_fly_teacher_logits_train_the_same_student(tmp_path, distilled, student, noisy_data,
                                                          finetuned_tiny):
    cfg = R.job(tmp_path, student, noisy_data, HP, **distillation(finetuned_tiny, teacherLogits="onTheFly"))
    R.assert_same_run(R.run(cfg), distilled[1], 0)
    assert "teacher logits computed" not in R.logs(cfg)


def test_distillation_resumes_after_sigkill_to_the_same_metrics(tmp_path, distilled, student, noisy_data,
                                                                finetuned_tiny):
    cfg = R.job(tmp_path, student, noisy_data, HP, **distillation(finetuned_tiny))
    R.assert_same_run(R.killed_and_resumed(cfg, EVERY), distilled[1], EVERY)
    assert "teacher logits read from the run's cache" in R.logs(cfg)  # scored once, not again after the kill


def test_student_export_matches_pytorch(distilled, noisy_data, tmp_path):
    cfg, m = distilled
    report = R.export_report(cfg.parent / "out" / "model", noisy_data[1], tmp_path / "export")
    assert report["evaluation"]["fp32"]["accuracy"] == pytest.approx(m["validation"]["accuracy"])


def test_teacher_with_other_labels_is_refused_before_any_worker(tmp_path, student, finetuned_tiny):
    rows = [{**r, "label": {"positive": "good", "negative": "bad"}[r["label"]]} for r in sentiment_rows(20)]
    train = write_csv(tmp_path / "train.csv", rows)
    spec = distillation(finetuned_tiny)
    code, err = run_cli(job_file(tmp_path, student, {"train": str(train)}, **spec), tmp_path)
    assert code == 2, err
    assert ("distillation.teacher.name: the teacher's labels ['negative', 'positive'] are not the job's labels "
            "['bad', 'good']") in err
    assert not list((tmp_path / "runs").glob("*/checkpoints"))
