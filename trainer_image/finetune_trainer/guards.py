"""Failures a training step can have that must not pass quietly: a non-finite loss and CUDA out of memory.

``StepGuard`` wraps each micro-batch's forward and backward for the training loop:

- A step whose loss is NaN or infinite on any rank is not applied (its gradients are dropped, the learning-rate
  schedule does not advance); after ``hyperparameters.maxNonFiniteSteps`` such steps in a row the run stops with
  ``TrainingDiverged``, so it is never exported or published. Steps the fp16 loss scaler skips (finite loss,
  overflowing gradients) are the scaler's own business and do not count.
- CUDA out of memory stops the run with the batch shape and what to change (``OutOfMemory``), or, with
  ``hyperparameters.autoBatchSize``, halves the micro-batch and doubles the accumulation in place (``Resized``):
  the same effective batch and the same optimizer state; the accumulation window is replayed at the new size.
  Each resize is recorded (metrics.json ``batch_resizes``, progress and status metrics) and survives a resume.

Both errors are input errors (exit code 2): retrying the same recipe unchanged cannot help.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from typing import Any

import torch

from finetune_trainer import dist
from finetune_trainer.errors import InputError


class TrainingDiverged(InputError):
    """The loss was not finite for too many consecutive steps."""


class OutOfMemory(InputError):
    """The device ran out of memory and the micro-batch cannot (or may not) shrink."""


class Resized(Exception):
    """The micro-batch was halved: the loop restarts the current accumulation window at the new size."""


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class StepGuard:
    """Per-step checks of one rank; collective decisions are taken by all ranks together at step boundaries."""

    def __init__(self, trainer: Any):
        self.trainer, self.hp, self.info = trainer, trainer.hp, trainer.info
        self.bad_streak = 0
        self.window_finite: bool | torch.Tensor = True  # stays on the device until the step boundary reads it
        self.oom: str | None = None  # "batch B, seq S" of this rank's out-of-memory micro-batch in this window

    def micro_step(self, batch: dict[str, torch.Tensor], module: torch.nn.Module, boundary: bool) -> torch.Tensor:
        """Run one micro-batch; returns its loss as a detached device tensor (no host sync: the loop reads it
        once per log window). Raises ``Resized``, ``OutOfMemory`` (see the module docstring).

        With several ranks, out-of-memory is agreed on before the boundary micro-batch's backward (the one that
        all-reduces gradients); an out-of-memory inside that backward cannot be agreed on and stops the run.
        """
        shape = f"batch {batch['input_ids'].shape[0]}, seq {batch['input_ids'].shape[1]}"
        trainer, accum = self.trainer, self.hp.gradient_accumulation_steps

        def forward() -> torch.Tensor:
            with trainer.profiler.phase("forward"):
                return trainer._forward(batch, module)[0]

        def backward(loss: torch.Tensor) -> None:
            with trainer.profiler.phase("backward"):
                trainer.scaler.scale(loss / accum).backward()

        synced = boundary and self.info.enabled
        loss = None
        if self.oom is None:  # after an OOM this rank only waits for the window's end, to agree with the others
            loss = self._try(forward, shape)
            if loss is not None and not synced and self._try(lambda: backward(loss) or True, shape) is None:
                loss = None
        if boundary or not self.info.enabled:
            self._settle_oom()
        if loss is None:  # this rank ran out earlier in the window; the boundary settles it
            return torch.tensor(float("nan"), device=batch["input_ids"].device)
        if synced:
            try:
                backward(loss)
            except RuntimeError as e:
                if not _is_oom(e):
                    raise
                raise OutOfMemory(self._advice(shape, "in the gradient all-reduce, which ranks cannot retry")) from None
        value = loss.detach()
        self.window_finite = torch.isfinite(value) & self.window_finite
        return value

    def _try(self, fn: Callable[[], Any], shape: str) -> Any:
        """``fn()``, or None after recording an out-of-memory error and freeing what it held."""
        try:
            return fn()
        except RuntimeError as e:
            if not _is_oom(e):
                raise
            self.oom = shape
            _release()
            return None

    def _advice(self, where: str, why: str = "") -> str:
        hp = self.hp
        return (
            f"CUDA out of memory at {where}{' ' + why if why else ''}: lower hyperparameters.batchSize "
            f"({hp.batch_size}) or raise gradientAccumulationSteps ({hp.gradient_accumulation_steps}), or turn on "
            f"gradientCheckpointing{'' if hp.auto_batch_size else ' or autoBatchSize'}"
        )

    def _settle_oom(self) -> None:
        """When any rank ran out of memory in this window: resize (autoBatchSize) or stop, on every rank alike."""
        oom = self.oom
        anyone = dist.any_flag(oom is not None, self.info) if self.info.enabled else oom is not None
        if not anyone:
            return
        self.oom = None
        self.window_finite = True
        where = oom or "another rank"
        hp = self.hp
        if not hp.auto_batch_size:
            raise OutOfMemory(self._advice(where))
        if hp.batch_size == 1:
            raise OutOfMemory(self._advice(where, "with batchSize 1, nothing left to halve"))
        self.resize(hp.batch_size // 2, hp.gradient_accumulation_steps * 2, where)
        raise Resized

    def resize(self, batch_size: int, accumulation: int, where: str) -> None:
        """Switch to ``batch_size`` x ``accumulation`` at the start of the current accumulation window."""
        t, hp, st = self.trainer, self.hp, self.trainer.state
        before = (hp.batch_size, hp.gradient_accumulation_steps)
        t.optimizer.zero_grad(set_to_none=True)  # the window is replayed at the new size
        st.batches_in_epoch = st.batches_in_epoch * hp.batch_size // batch_size
        st.batch_resizes.append({"step": st.step, "batch_size": batch_size, "gradient_accumulation_steps": accumulation,
                                 "reason": f"CUDA out of memory at {where}"})
        self._apply(batch_size, accumulation)
        t.progress.message(
            "CUDA out of memory at %s: micro-batch %d -> %d, gradient accumulation %d -> %d (effective batch %d "
            "unchanged)", where, before[0], batch_size, before[1], accumulation, batch_size * accumulation,
        )
        t.progress.write(st.step, st.epoch, {"batch_size": batch_size, "gradient_accumulation_steps": accumulation},
                         "training")

    def restore(self) -> None:
        """After a resume: the micro-batch and accumulation of the last resize, if the run had one."""
        if self.trainer.state.batch_resizes:
            last = self.trainer.state.batch_resizes[-1]
            self._apply(last["batch_size"], last["gradient_accumulation_steps"])

    def _apply(self, batch_size: int, accumulation: int) -> None:
        t, hp = self.trainer, self.hp
        hp.batch_size, hp.gradient_accumulation_steps = batch_size, accumulation
        t.sampler.batch_size = batch_size
        t.micro_per_epoch = math.ceil(t.sampler.per_rank / batch_size)

    def step_is_finite(self, step: int) -> bool:
        """Whether the window's loss was finite on every rank; raises ``TrainingDiverged`` after too many not."""
        local = bool(self.window_finite)  # the step's one host read of the device-side flag
        finite = not dist.any_flag(not local, self.info) if self.info.enabled else local
        self.window_finite = True
        if finite:
            self.bad_streak = 0
            return True
        self.bad_streak += 1
        limit = self.hp.max_non_finite_steps
        if self.bad_streak >= limit:
            raise TrainingDiverged(
                f"loss was NaN or infinite for {limit} consecutive steps (up to step {step}): the run stops and is "
                "not exported; lower hyperparameters.learningRate, keep maxGradNorm set, or use precision bf16/fp32"
            )
        return False


def _release() -> None:
    """Free what the failed micro-batch held so that the retry at half size can allocate."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
