"""What a training run starts from: its encoded data (``prepare_data``), the precision and optimizer kernel it
picks, its seed, and the replicated counters every checkpoint carries (``State``)."""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_trainer import data as D
from finetune_trainer import run_stats
from finetune_trainer.config import Precision, TaskType, TrainerConfig
from finetune_trainer.errors import InputError
from finetune_trainer.limits import check_sequence_length
from finetune_trainer.model import load_tokenizer
from finetune_trainer.preprocessing import Preprocessing
from finetune_trainer.roles import load_roles

log = logging.getLogger("finetune_trainer")


@dataclass
class State:
    """Replicated counters saved in every checkpoint; with the sampler's seed they fix the data order."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    samples: int = 0
    batch_resizes: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Prepared:
    train: D.Encoded
    validation: D.Encoded
    test: D.Encoded | None
    label_names: list[str]
    tokenizer: Any
    preprocessing: Preprocessing
    train_for_epoch: Callable[[int], D.Encoded] | None = None  # with dataset.augmentation: each epoch's rows
    stats: dict[str, Any] = field(default_factory=dict)
    teacher_inputs: Any = None  # with spec.distillation: distill.TeacherInputs


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's random generators (Python, NumPy, torch, CUDA), as one rank's checkpoint keeps them."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` saved (dropout and sampling continue as if never stopped)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available() and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def prepare_data(cfg: TrainerConfig, cache_dir: Path) -> Prepared:
    """Load, label and tokenize every split; raises InputError for anything a user must fix."""
    ds, task, hp = cfg.dataset, cfg.task, cfg.hyperparameters
    check_sequence_length(cfg.model, hp, cache_dir)
    roles = load_roles(ds, task, cfg.hold_out_seed, cache_dir)
    train, val, test = roles.train, roles.validation, roles.test
    names = roles.label_names
    if task.type != TaskType.REGRESSION:
        if task.num_labels is not None and len(names) != task.num_labels:
            raise InputError(f"task.numLabels is {task.num_labels} but the training data has {len(names)} labels")
        if len(names) < 2 and task.type == TaskType.SINGLE_LABEL:
            raise InputError(f"dataset.labelColumn: training data has {len(names)} label(s) {names}; need at least 2")
    tokenizer = load_tokenizer(cfg.model, cache_dir)
    prep = D.preprocessing_of(ds, hp)

    def encode(split: D.TextSplit) -> D.Encoded:
        return D.tokenize(split, tokenizer, prep, D.encode_labels(split, names, task))

    teacher = None
    if cfg.distillation is not None:  # the teacher tokenizes the training rows too
        from finetune_trainer.distill import TeacherInputs

        teacher = TeacherInputs(cfg.distillation, prep, names, cache_dir)
    encode_train = teacher.wrap(encode) if teacher else encode
    splits = {"train": train, "validation": val} | ({"test": test} if test else {})
    encoded = {role: (encode_train if role == "train" else encode)(split) for role, split in splits.items()}
    stats = run_stats.data_stats(splits, encoded, names, task.type, tokenizer, prep, hp.seed)
    val_enc, test_enc = encoded["validation"], encoded.get("test")
    if ds.augmentation is None:
        return Prepared(encoded["train"], val_enc, test_enc, names, tokenizer, prep, stats=stats,
                        teacher_inputs=teacher)
    from finetune_trainer import augment

    epoch_split = augment.epochs(train, ds.augmentation, hp.seed, cache_dir)
    for_epoch = functools.lru_cache(maxsize=1)(lambda epoch: encode_train(epoch_split(epoch)))
    return Prepared(for_epoch(0), val_enc, test_enc, names, tokenizer, prep, for_epoch, stats, teacher)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Without it oneDNN emulates bf16: on an
    AVX2-only EPYC a MiniLM training step took about 9x as long under bf16 autocast as in fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return bool(torch.cpu._is_avx512_bf16_supported())


def fused_adamw(device: torch.device) -> bool:
    """torch's fused AdamW kernel where it has one: on CUDA and on the CPU (the Trainer's default optimizer too).
    On the CPU its step took 0.18x the for-loop implementation's time for MiniLM's 22M parameters."""
    return device.type in ("cuda", "cpu")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32). auto picks bf16 where the hardware has it (a GPU with bf16, a CPU with
    native bf16), else fp16 on an older GPU and fp32 on a CPU without it."""
    if precision == Precision.FP32:
        return None
    if precision == Precision.FP16:
        if device.type != "cuda":
            raise InputError("hyperparameters.precision fp16 needs a CUDA GPU; use bf16 or auto on CPU")
        return torch.float16
    if device.type == "cpu" and not cpu_has_bf16():
        if precision == Precision.AUTO:
            return None
        log.warning("hyperparameters.precision bf16: this CPU has no native bf16 (AVX512-BF16/AMX); bf16 autocast "
                    "is emulated here and several times slower than fp32 (precision auto would pick fp32)")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if precision == Precision.BF16:
            raise InputError("hyperparameters.precision bf16 is not supported by this GPU; use fp16 or auto")
        return torch.float16
    return torch.bfloat16


class Preempted(Exception):
    """SIGTERM arrived; a final checkpoint was committed at ``step``."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"stopped by SIGTERM after a checkpoint at step {step}")
