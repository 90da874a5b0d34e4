"""What every recipe's test does with a real 2-process torchrun (on the resume tests' helpers): run a job to the
end, kill one with SIGKILL mid-run and resume it, compare the two, and export the result to ONNX."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_resume import (
    TOLERANCE,
    config,
    finish,
    kill_tree,
    logs,
    losses_after,
    metrics,
    start,
    wait_for_log,
    wait_for_step,
)


def job(tmp: Path, model: Path, data: tuple[Path, Path], hp: dict[str, Any], **spec: Any) -> Path:
    """A trainer config checkpointing under ``tmp``; ``spec`` adds or replaces top-level sections."""
    path = config(tmp, model, data, str(tmp / "checkpoints"), **hp)
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, **spec}))
    return path


def run(cfg: Path, env: dict[str, str] | None = None) -> dict:
    """Run the job to the end with 2 processes; its metrics.json."""
    proc = start(cfg, env or {})
    assert finish(proc, cfg) == 0, logs(cfg)[-3000:]
    return metrics(cfg)


def killed_and_resumed(cfg: Path, every: int, env: dict[str, str] | None = None) -> dict:
    """SIGKILL torchrun and both workers just after the first checkpoint, start again; the resumed metrics."""
    proc = start(cfg, env or {})
    wait_for_log(cfg, proc, f"checkpoint-{every:08d} committed")
    wait_for_step(cfg, proc, every + 2)
    kill_tree(proc)
    proc.wait()
    resumed = run(cfg, env)
    assert f"resumed from checkpoint at step {every}" in logs(cfg)
    return resumed


def assert_same_run(resumed: dict, reference: dict, after: int) -> None:
    """Each step trained once, and the same losses and validation metrics as the uninterrupted run."""
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in reference["history"]]
    expected, got = losses_after(reference, after), losses_after(resumed, after)
    assert got.keys() == expected.keys()
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, abs=TOLERANCE), f"step {step}"
    assert resumed["validation"]["loss"] == pytest.approx(reference["validation"]["loss"], abs=TOLERANCE)
    assert resumed["validation"]["accuracy"] == reference["validation"]["accuracy"]


def majority_share(path: Path, column: str = "label") -> float:
    """Accuracy of always predicting the most common label: the untrained baseline a model must beat."""
    with path.open(newline="", encoding="utf-8") as f:
        labels = [row[column] for row in csv.DictReader(f)]
    return Counter(labels).most_common(1)[0][1] / len(labels)


def export_report(model_dir: Path, eval_csv: Path, out: Path) -> dict:
    """``python -m finetune_trainer export`` of a trained model folder; its report (parity checked)."""
    from finetune_trainer.export import main

    assert main(["--model", str(model_dir), "--out", str(out), "--eval-file", str(eval_csv)]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["passed"] and report["parity"]["argmax_agreement"] == 1.0
    assert report["parity"]["max_abs_diff"] < 1e-4
    return report
