"""`finetune run` on bad input: one clear line naming the field or file, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.models import sentiment_rows, write_csv


def job_file(tmp: Path, model: Path, dataset: dict, **spec) -> Path:
    job = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bad"},
        "spec": {"model": {"name": str(model)}, "dataset": dataset, **spec},
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run_cli(job: Path, tmp: Path) -> tuple[int, str]:
    import contextlib
    import io

    from finetune_operator.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["run", str(job), "--runs", str(tmp / "runs")])
    return code, err.getvalue()


@pytest.fixture
def good_csv(tmp_path):
    return write_csv(tmp_path / "train.csv", sentiment_rows(20))


def test_missing_dataset_file(tmp_path, tiny_bert):
    code, err = run_cli(job_file(tmp_path, tiny_bert, {"train": str(tmp_path / "nope.csv")}), tmp_path)
    assert code == 2
    assert "dataset.train: file not found" in err and "nope.csv" in err


def test_missing_column(tmp_path, tiny_bert, good_csv):
    code, err = run_cli(job_file(tmp_path, tiny_bert, {"train": str(good_csv), "labelColumn": "sentiment"}), tmp_path)
    assert code == 2
    assert "dataset.labelColumn 'sentiment' not in columns ['text', 'label']" in err


def test_empty_dataset(tmp_path, tiny_bert):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    code, err = run_cli(job_file(tmp_path, tiny_bert, {"train": str(empty)}), tmp_path)
    assert code == 2
    assert "empty.csv" in err and "no rows" in err


def test_unknown_label_name(tmp_path, tiny_bert, good_csv):
    job = job_file(tmp_path, tiny_bert, {"train": str(good_csv), "labelNames": ["negative", "neutral"]})
    code, err = run_cli(job, tmp_path)
    assert code == 2
    assert "unknown label 'positive'" in err and "['negative', 'neutral']" in err


def test_label_id_out_of_range(tmp_path, tiny_bert):
    data = tmp_path / "ids.csv"
    data.write_text("text,label\ngood,0\nbad,1\nugly,7\n")
    job = job_file(tmp_path, tiny_bert, {"train": str(data)}, task={"numLabels": 2})
    code, err = run_cli(job, tmp_path)
    assert code == 2
    assert "row 3 has label id 7, out of range 0..1" in err


def test_non_utf8_text(tmp_path, tiny_bert):
    data = tmp_path / "latin1.csv"
    data.write_bytes("text,label\ncaf\xe9 cr\xe8me,positive\n".encode("latin-1"))
    code, err = run_cli(job_file(tmp_path, tiny_bert, {"train": str(data)}), tmp_path)
    assert code == 2
    assert "latin1.csv is not UTF-8" in err and "line 2" in err


def test_invalid_spec_fields_all_named(tmp_path, tiny_bert, good_csv):
    job = job_file(
        tmp_path, tiny_bert, {"train": str(good_csv), "validationSplit": 1.5},
        hyperparameters={"learningRate": -1, "precision": "fp8", "batchsize": 8},
    )
    code, err = run_cli(job, tmp_path)
    assert code == 2
    assert "spec.dataset.validationSplit: expected a number less than 1" in err
    assert "spec.hyperparameters.learningRate: expected a number greater than 0" in err
    assert "spec.hyperparameters.precision: expected one of 'auto', 'bf16', 'fp16' or 'fp32', got 'fp8'" in err
    assert "spec.hyperparameters.batchsize: expected no such field" in err


def test_missing_model_folder(tmp_path, good_csv):
    code, err = run_cli(job_file(tmp_path, tmp_path / "no-model", {"train": str(good_csv)}), tmp_path)
    assert code == 2
    assert "model.name: model folder not found" in err


def test_missing_translation_model_is_named_before_training(tmp_path, tiny_bert, good_csv):
    augmentation = {"copies": 1, "backTranslation": {"forwardModel": str(tmp_path / "no-such-translator"),
                                                      "backwardModel": str(tiny_bert)}}
    code, err = run_cli(job_file(tmp_path, tiny_bert, {"train": str(good_csv), "augmentation": augmentation}),
                        tmp_path)
    assert code == 2
    assert "dataset.augmentation.backTranslation.forwardModel: model folder not found" in err


def test_exit_code_and_no_traceback_from_the_real_command(tmp_path, tiny_bert):
    job = job_file(tmp_path, tiny_bert, {"train": str(tmp_path / "missing.csv")})
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_operator.cli", "run", str(job), "--runs", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "error: dataset.train: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_resume_continues_a_local_run(tmp_path, tiny_bert, sentiment_csv):
    train, val = sentiment_csv
    job = job_file(tmp_path, tiny_bert, {"train": str(train), "validation": str(val)},
                   hyperparameters={"maxSteps": 6, "learningRate": 3e-3, "logEverySteps": 1},
                   checkpoint={"everySteps": 3})
    from finetune_operator.cli import main

    assert main(["run", str(job), "--runs", str(tmp_path / "runs"), "--name", "first"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    # Asked for more steps, the same run directory continues from its last checkpoint instead of step 0.
    assert main(["run", str(job), "--resume", str(run), "--max-steps", "9", "--name", "first"]) == 0
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == list(range(1, 10))


def test_max_seq_length_over_the_model_limit_is_rejected_before_any_worker(tmp_path, tiny_bert, good_csv):
    hp = {"maxSeqLength": 192, "truncation": "head_tail", "headTokens": 128}
    code, err = run_cli(job_file(tmp_path, tiny_bert, {"train": str(good_csv)}, hyperparameters=hp), tmp_path)
    assert code == 2
    assert "hyperparameters.maxSeqLength 192 (head_tail: headTokens 128 + 64 from the end) exceeds the 128-token" in err
    assert "Traceback" not in err
    run = next((tmp_path / "runs").iterdir())
    assert not (run / "checkpoints").exists() and not (run / "metrics.json").exists()  # no worker ever started
