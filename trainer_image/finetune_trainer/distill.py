"""Knowledge distillation (spec.distillation): the teacher, its logits for each training batch, and the loss.

The teacher reads the same rows as the student through its own tokenizer. Its logits are reordered to the
job's label order, so a teacher whose labels are the job's in another order is fine; one with other labels is
refused. In ``cached`` mode each rank scores its share of the training rows once, before training; the ranks
exchange them and the node keeps the result in the run's cache, so a restarted run reads it back. In
``onTheFly`` mode every batch is scored when it is built (augmented rows differ each epoch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from finetune_trainer import data as D
from finetune_trainer import dist
from finetune_trainer.errors import InputError
from finetune_trainer.preprocessing import Preprocessing
from finetune_trainer.sections import TeacherLogits
from finetune_trainer.sources import model_location
from finetune_trainer.stages import DistillationSpec

log = logging.getLogger(__name__)

FIELD = "distillation.teacher.name"


def label_order(teacher_labels: list[str], job_labels: list[str]) -> list[int]:
    """For each job label, the teacher's logit column; InputError when the label sets differ."""
    if sorted(teacher_labels) != sorted(job_labels):
        raise InputError(f"{FIELD}: the teacher's labels {teacher_labels} are not the job's labels {job_labels}")
    return [teacher_labels.index(name) for name in job_labels]


def labels_of(config: Any) -> list[str]:
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def check_teacher(spec: DistillationSpec, job_labels: list[str], cache_dir: Path) -> None:
    """The teacher's config (no weights read) has the job's labels."""
    from transformers import AutoConfig

    t = spec.teacher
    where = model_location(t.name, FIELD, cache_dir)
    try:
        config = AutoConfig.from_pretrained(where, revision=t.revision, trust_remote_code=t.trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"{FIELD}: cannot read a model config from {t.name}: {e}") from None
    label_order(labels_of(config), job_labels)


class TeacherInputs:
    """The teacher's tokenization of the current training rows, made beside the student's."""

    def __init__(self, spec: DistillationSpec, prep: Preprocessing, job_labels: list[str], cache_dir: Path):
        from finetune_trainer.model import load_tokenizer

        check_teacher(spec, job_labels, cache_dir)
        self.spec, self.prep = spec, prep
        self.tokenizer = load_tokenizer(spec.teacher, cache_dir)
        self.current: tuple[D.Encoded, D.Encoded] | None = None  # (student's, teacher's) encoding of train

    def wrap(self, encode: Callable[[D.TextSplit], D.Encoded]) -> Callable[[D.TextSplit], D.Encoded]:
        def encode_both(split: D.TextSplit) -> D.Encoded:
            student = encode(split)
            self.current = (student, D.tokenize(split, self.tokenizer, self.prep, student.labels))
            return student

        return encode_both


class Distiller:
    """The teacher model on this rank's device, its logits for training batches, and the combined loss."""

    def __init__(self, spec: DistillationSpec, inputs: TeacherInputs, job_labels: list[str], cache_dir: Path,
                 info: dist.DistInfo, batch_size: int):
        from transformers import AutoModelForSequenceClassification

        t = spec.teacher
        self.spec, self.inputs, self.info, self.batch_size = spec, inputs, info, batch_size
        where = model_location(t.name, FIELD, cache_dir)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                where, revision=t.revision, trust_remote_code=t.trust_remote_code
            )
        except OSError as e:
            raise InputError(f"{FIELD}: cannot load {t.name}: {e}") from None
        self.order = torch.tensor(label_order(labels_of(model.config), job_labels), device=info.device)
        self.model = model.to(info.device).eval().requires_grad_(False)
        self.collate = D.Collator(inputs.tokenizer.pad_token_id or 0)
        self.cached: np.ndarray | None = None
        if spec.teacher_logits == TeacherLogits.CACHED:
            self.cached = self._cached_logits(cache_dir)

    @torch.no_grad()
    def logits(self, data: D.Encoded, indices: Sequence[int]) -> torch.Tensor:
        """The teacher's logits (float32, job label order) for rows ``indices`` of its encoding ``data``."""
        out = []
        for i in range(0, len(indices), self.batch_size * 2):
            batch = self.collate(data, indices[i : i + self.batch_size * 2])
            batch.pop("labels")
            batch = {k: v.to(self.info.device) for k, v in batch.items()}
            out.append(self.model(**batch).logits.float()[:, self.order])
        return torch.cat(out)

    def _cached_logits(self, cache_dir: Path) -> np.ndarray:
        assert self.inputs.current is not None
        _, teacher = self.inputs.current
        key = hashlib.sha256(json.dumps([self.spec.teacher.name, self.spec.teacher.revision, teacher.input_ids,
                                         teacher.token_type_ids]).encode()).hexdigest()[:16]
        path = cache_dir / f"teacher-logits-{key}.npy"
        if path.exists():
            log.info("teacher logits read from the run's cache (%s)", path.name)
            return np.load(path)
        mine = list(range(self.info.rank, len(teacher), self.info.world_size))
        part = self.logits(teacher, mine).cpu().numpy() if mine else np.zeros((0, len(self.order)), np.float32)
        full = np.zeros((len(teacher), len(self.order)), dtype=np.float32)
        for idx, rows in dist.gather((mine, part), self.info):
            full[idx] = rows
        if self.info.local_rank == 0:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.npy")
            np.save(tmp, full)
            os.replace(tmp, path)  # whole or absent: a run killed while writing leaves no half file
        log.info("teacher logits computed for %d training rows", len(teacher))
        return full

    def soft_targets(self, data: D.Encoded, indices: Sequence[int]) -> torch.Tensor | None:
        """The teacher's logits for a training batch; None for any other data (evaluation)."""
        if self.inputs.current is None or data is not self.inputs.current[0]:
            return None
        if self.cached is not None:
            return torch.from_numpy(self.cached[list(indices)])
        return self.logits(self.inputs.current[1], list(indices))

    def loss(self, hard: torch.Tensor, logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """crossEntropyWeight * hard + klWeight * T^2 * KL(teacher_T || student_T), batch mean."""
        t = self.spec.temperature
        kl = F.kl_div(F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher.to(logits.device) / t, dim=-1),
                      log_target=True, reduction="batchmean")
        return self.spec.cross_entropy_weight * hard + self.spec.kl_weight * t * t * kl


class Collate:
    """The student's collator, plus ``teacher_logits`` for training batches."""

    def __init__(self, base: Callable[[D.Encoded, Sequence[int]], dict[str, torch.Tensor]], distiller: Distiller):
        self.base, self.distiller = base, distiller

    def __call__(self, data: D.Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = self.base(data, indices)
        soft = self.distiller.soft_targets(data, indices)
        if soft is not None:
            batch["teacher_logits"] = soft
        return batch
