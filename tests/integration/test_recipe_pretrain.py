"""spec.pretraining with a real 2-process torchrun: the masked-LM stage lowers the masked-LM loss on held-out
domain text, then the classifier learns from its encoder; a run SIGKILLed in either stage resumes to the
uninterrupted run's metrics (without redoing a finished stage); the classifier exports to ONNX matching PyTorch;
a domain source without its text column is refused before any worker starts."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.models import sentiment_rows, write_csv
from tests.integration import recipe_runs as R
from tests.integration.test_run_errors import job_file, run_cli

pytestmark = pytest.mark.slow

MLM_STEPS, STEPS, EVERY = 40, 60, 10
HP = {"learningRate": 2e-3, "maxSteps": STEPS, "evalSteps": STEPS, "batchSize": 8}
MLM_MARGIN = 0.5  # the stage's held-out masked-LM loss at least this much below the untrained encoder's
MARGIN = 0.3  # the classifier's validation accuracy at least this far above always answering the majority label


@pytest.fixture(scope="module")
def domain_txt(tmp_path_factory) -> Path:
    """Unlabelled text of the task's domain: one review a line, none of them the labelled rows."""
    path = tmp_path_factory.mktemp("domain") / "reviews.txt"
    path.write_text("\n".join(r["text"] for r in sentiment_rows(600, seed=21)) + "\n", encoding="utf-8")
    return path


def pretraining(source: Path, **extra) -> dict:
    return {"pretraining": {"source": str(source), "maxSteps": MLM_STEPS, "learningRate": 5e-3,
                            "wholeWordMask": True, **extra}}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tiny_bert, sentiment_csv, domain_txt):
    d = tmp_path_factory.mktemp("pretrained")
    cfg = R.job(d, tiny_bert, sentiment_csv, HP, **pretraining(domain_txt))
    return cfg, R.run(cfg)


def wait_for_stage(cfg: Path, proc: subprocess.Popen, stage: str, step: int, timeout: float = 240) -> None:
    progress = cfg.parent / "progress.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"trainer exited early: {R.logs(cfg)[-3000:]}"
        if progress.exists():
            seen = json.loads(progress.read_text())
            if seen.get("stage") == stage and seen["step"] >= step:
                return
        time.sleep(0.02)
    raise AssertionError(f"no {stage} step {step} within {timeout}s: {R.logs(cfg)[-3000:]}")


def killed_in(cfg: Path, stage: str, committed: str) -> dict:
    """SIGKILL torchrun and both workers a few steps after ``committed`` was logged, start again; the metrics."""
    proc = R.start(cfg, {})
    R.wait_for_log(cfg, proc, committed, timeout=240)
    wait_for_stage(cfg, proc, stage, EVERY + 2)
    R.kill_tree(proc)
    proc.wait()
    return R.run(cfg)


def assert_same_stage(resumed: dict, reference: dict) -> None:
    got, expected = resumed["pretraining"], reference["pretraining"]
    assert [h["step"] for h in got["history"]] == [h["step"] for h in expected["history"]]
    for a, b in zip(got["history"], expected["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=R.TOLERANCE), a["step"]
    for key in ("masked_lm_loss_before", "masked_lm_loss_after"):
        assert got[key] == pytest.approx(expected[key], abs=R.TOLERANCE), key


def test_the_stage_lowers_masked_lm_loss_and_the_classifier_learns(pretrained, sentiment_csv):
    cfg, m = pretrained
    stage = m["pretraining"]
    print(f"masked-LM loss on held-out domain text: {stage['masked_lm_loss_before']:.3f} before, "
          f"{stage['masked_lm_loss_after']:.3f} after {stage['steps']} steps")
    assert stage["steps"] == MLM_STEPS and stage["whole_word_mask"] and stage["held_out_texts"] == 30
    assert stage["masked_lm_loss_after"] <= stage["masked_lm_loss_before"] - MLM_MARGIN
    baseline = R.majority_share(sentiment_csv[1])
    assert m["validation"]["accuracy"] >= baseline + MARGIN, (m["validation"], baseline)
    assert m["steps"] == STEPS
    # The classifier started from the stage's encoder, which the job's storage keeps for a restart.
    assert (cfg.parent / "out" / "pretrained-encoder" / "model.safetensors").is_file()
    stored = cfg.parent / "checkpoints" / "default" / "resume" / "pretraining"
    assert (stored / "done.json").is_file() and (stored / "encoder" / "model.safetensors").is_file()
    assert not list(stored.glob("checkpoint-*")), "the stage's own checkpoints are dropped once it is done"
    progress = json.loads((cfg.parent / "progress.json").read_text())
    assert progress["stage"] == "finetuning" and progress["phase"] == "completed"


def test_a_run_killed_during_pretraining_resumes_to_the_same_metrics(tmp_path, pretrained, tiny_bert,
                                                                     sentiment_csv, domain_txt):
    cfg = R.job(tmp_path, tiny_bert, sentiment_csv, HP, **pretraining(domain_txt))
    resumed = killed_in(cfg, "pretraining", f"pretraining/checkpoint-{EVERY:08d} committed")
    assert f"pretraining resumed from checkpoint at step {EVERY}" in R.logs(cfg)
    assert_same_stage(resumed, pretrained[1])
    R.assert_same_run(resumed, pretrained[1], 0)


def test_a_run_killed_during_finetuning_does_not_redo_pretraining(tmp_path, pretrained, tiny_bert,
                                                                  sentiment_csv, domain_txt):
    cfg = R.job(tmp_path, tiny_bert, sentiment_csv, HP, **pretraining(domain_txt))
    resumed = killed_in(cfg, "finetuning", f"resume/checkpoint-{EVERY:08d} committed")
    second = sorted(cfg.parent.glob("log-*.txt"))[-1].read_text()
    assert f"resumed from checkpoint at step {EVERY}" in second
    assert f"pretraining stage already complete ({MLM_STEPS} steps)" in second
    assert "pretraining step" not in second and "masked-LM loss" not in second
    assert_same_stage(resumed, pretrained[1])
    R.assert_same_run(resumed, pretrained[1], EVERY)


def test_classifier_export_matches_pytorch(pretrained, sentiment_csv, tmp_path):
    cfg, m = pretrained
    report = R.export_report(cfg.parent / "out" / "model", sentiment_csv[1], tmp_path / "export")
    assert report["evaluation"]["fp32"]["accuracy"] == pytest.approx(m["validation"]["accuracy"])


def test_a_source_without_the_text_column_is_refused_before_any_worker(tmp_path, tiny_bert):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(20))
    domain = write_csv(tmp_path / "domain.csv", [{"body": r["text"]} for r in sentiment_rows(20, seed=5)])
    job = job_file(tmp_path, tiny_bert, {"train": str(train)}, pretraining={"source": str(domain)})
    code, err = run_cli(job, tmp_path)
    assert code == 2, err
    assert f"pretraining.textColumn 'text' not in columns ['body'] of {domain}" in err
    assert "Traceback" not in err
    assert not list((tmp_path / "runs").glob("*/checkpoints")) and not list((tmp_path / "runs").glob("*/model"))


def test_a_tokenizer_without_a_mask_token_is_refused_before_any_worker(tmp_path, tiny_bert):
    import shutil

    model = tmp_path / "no-mask"
    shutil.copytree(tiny_bert, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("mask_token", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    train = write_csv(tmp_path / "train.csv", sentiment_rows(20))
    domain = tmp_path / "domain.txt"
    domain.write_text("the plot was great\nthe acting was awful\n", encoding="utf-8")
    job = job_file(tmp_path, model, {"train": str(train)}, pretraining={"source": str(domain)})
    code, err = run_cli(job, tmp_path)
    assert code == 2, err
    assert "pretraining: the tokenizer of model.name has no mask token" in err
    assert not list((tmp_path / "runs").glob("*/checkpoints"))
