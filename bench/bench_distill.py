"""Distillation: a teacher -> student pair, the student's accuracy and latency against the teacher's, and
against the same student fine-tuned without the teacher.

The pair is small enough to train on a shared 2-core CPU in minutes (a MiniLM-sized pair ran at 0.2 samples/s
on the shared machine, hours for one run). Teacher: the test suite's tiny BERT (hidden 64, 2 layers, a
WordPiece vocabulary of the corpus' words) fine-tuned on clean sentiment labels. Student: hidden 32, 1 layer,
a tokenizer that knows only the sentiment words and spells the rest letter by letter. The student is trained
by ``python -m finetune_trainer train`` (one process, ``--steps`` steps, same seed) on the same rows with 40%
of the labels flipped (weak labels): alone, and with ``spec.distillation`` at two loss weightings (the default
0.7 CE + 0.3 KL, and 0.3 CE + 0.7 KL), T 2, cached teacher logits. Accuracy on ``--test`` clean held-out rows;
latency PyTorch eager at batch 1, inputs padded to 128 tokens.

    python bench/bench_distill.py

Writes bench/results/distill-<date>.json and the "Distillation" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tiny models and data the tests build

from bench.bench_inference import machine, timed  # noqa: E402
from bench.markdown import write_section  # noqa: E402
from tests.fixtures.models import NEGATIVE, POSITIVE, make_tiny_bert, sentiment_rows  # noqa: E402
from tests.fixtures.triton import finetune_tiny  # noqa: E402

SECTION = "## Distillation (teacher -> student)"
SEQ = 128
NOISE = 0.4


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    return path


WEIGHTS = {"student_alone": None, "distilled_0.7ce_0.3kl": (0.7, 0.3), "distilled_0.3ce_0.7kl": (0.3, 0.7)}


def train(work: Path, name: str, student: Path, train_csv: Path, val_csv: Path, steps: int, teacher: Path,
          weights: tuple[float, float] | None) -> dict:
    cfg = {
        "jobName": name, "outputDir": str(work / name), "model": {"name": str(student)},
        "dataset": {"train": str(train_csv), "validation": str(val_csv)},
        "hyperparameters": {"maxSteps": steps, "learningRate": 2e-3, "batchSize": 8, "maxSeqLength": SEQ,
                            "evalSteps": steps, "logEverySteps": 10, "precision": "fp32", "seed": 42},
    }
    if weights is not None:
        cfg["distillation"] = {"teacher": {"name": str(teacher)}, "temperature": 2.0,
                               "crossEntropyWeight": weights[0], "klWeight": weights[1]}
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([sys.executable, "-m", "finetune_trainer", "train", "--config", str(path)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((work / name / "metrics.json").read_text())


def accuracy(model_dir: Path, rows: list[dict[str, str]]) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    right = 0
    with torch.inference_mode():
        for i in range(0, len(rows), 32):
            chunk = rows[i : i + 32]
            enc = tok([r["text"] for r in chunk], padding=True, truncation=True, max_length=SEQ, return_tensors="pt")
            pred = model(**enc).logits.argmax(1).tolist()
            right += sum(model.config.id2label[p] == r["label"] for p, r in zip(pred, chunk, strict=True))
    return right / len(rows)


def latency(models: dict[str, Path], texts: list[str], runs: int) -> dict[str, dict[str, float]]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    fns = {}
    for name, path in models.items():
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        enc = AutoTokenizer.from_pretrained(path)(texts, padding="max_length", truncation=True, max_length=SEQ,
                                                  return_tensors="pt")

        def run(i: int, model=model, enc=enc) -> None:
            with torch.inference_mode():
                model(**{k: v[i % len(texts)][None] for k, v in enc.items()})

        fns[name] = run
    return timed(fns, warmup=3, runs=runs)


def markdown(r: dict) -> str:
    m, a = r["machine"], r["args"]
    lines = [
        SECTION,
        "",
        f"Measured {r['date']} with `python bench/bench_distill.py` (defaults: {a}) on {m['cores']} cores "
        f"({m['cpu']}), {m['memory_gib']} GiB, GPU: {m['gpu']}; torch {m['torch']}; load average "
        f"{m['load_average_at_start']:.1f} at start. The machine was shared with other jobs running at the same "
        "time: latencies and training times are noisy; accuracies are not (same seed, same rows).",
        "",
        "A small synthetic pair, not a production one (a MiniLM-sized pair ran at 0.2 samples/s on the shared "
        "machine): teacher the test suite's tiny BERT (hidden 64, 2 layers) fine-tuned on clean sentiment labels; "
        "student hidden 32, 1 layer, its own tokenizer (only the sentiment words, the rest spelled letter by "
        f"letter), trained {a['steps']} steps on {a['train']} rows whose labels are {NOISE:.0%} flipped. "
        f"Accuracy on {a['test']} clean held-out rows; latency PyTorch eager, batch 1, {SEQ} tokens, p50 / p99 "
        f"over {a['runs']} runs.",
        "",
        "| Model | Parameters | Accuracy | Latency p50 / p99 ms | Training s |",
        "|---|---|---|---|---|",
    ]
    for name, e in r["models"].items():
        seconds = f"{e['train_seconds']:.0f}" if "train_seconds" in e else "-"
        lines.append(f"| {name} | {e['parameters']:,} | {e['accuracy']:.4f} | {e['latency']['p50_ms']:.2f} / "
                     f"{e['latency']['p99_ms']:.2f} | {seconds} |")
    lines += [
        "",
        f"Raw numbers: `bench/results/{r['file']}`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=256)
    p.add_argument("--test", type=int, default=400)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args(argv)
    result: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": machine(), "args": vars(args)}
    rng = random.Random(7)
    flip = {"positive": "negative", "negative": "positive"}
    clean = sentiment_rows(args.train, seed=2)
    noisy = [{**r, "label": flip[r["label"]] if rng.random() < NOISE else r["label"]} for r in clean]
    test_rows = sentiment_rows(args.test, seed=99)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = [r["text"] for r in sentiment_rows(400, seed=1)]
        teacher = finetune_tiny(make_tiny_bert(work / "teacher-base", corpus), write_rows(work / "clean.csv", clean),
                                work / "teacher")
        student = make_tiny_bert(work / "student", [" ".join(POSITIVE + NEGATIVE)], hidden=32, layers=1)
        noisy_csv = write_rows(work / "noisy.csv", noisy)
        val_csv = write_rows(work / "val.csv", sentiment_rows(64, seed=3))
        models: dict[str, dict] = {"teacher": {}}
        paths = {"teacher": teacher}
        for name, weights in WEIGHTS.items():
            started = time.monotonic()
            train(work, name, student, noisy_csv, val_csv, args.steps, teacher, weights)
            models[name] = {"train_seconds": time.monotonic() - started}
            paths[name] = work / name / "model"
        lat = latency(paths, [r["text"] for r in test_rows[:50]], args.runs)
        from transformers import AutoModelForSequenceClassification

        for name, path in paths.items():
            models[name]["accuracy"] = accuracy(path, test_rows)
            models[name]["latency"] = lat[name]
            models[name]["parameters"] = sum(
                t.numel() for t in AutoModelForSequenceClassification.from_pretrained(path).parameters())
    result["models"] = models
    result["file"] = f"distill-{result['date']}.json"
    (ROOT / "bench" / "results" / result["file"]).write_text(json.dumps(result, indent=2))
    write_section(ROOT / "BENCHMARKS.md", SECTION, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
