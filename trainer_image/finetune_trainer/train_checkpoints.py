"""The trainer's checkpoints: where they go, resuming from the newest, saving every rank's state, and the best
weights of a step trained before a restart. A base of ``loop.Trainer``, which sets the attributes named here."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from finetune_trainer import contract, dist, evaluate
from finetune_trainer.config import Hyperparameters, TrainerConfig
from finetune_trainer.guards import StepGuard
from finetune_trainer.model import checkpoint_state, load_checkpoint_state
from finetune_trainer.progress import Progress
from finetune_trainer.run_setup import State, restore_rng, rng_state

if TYPE_CHECKING:
    from finetune_trainer.checkpoint import CheckpointManager, SaveStats

log = logging.getLogger("finetune_trainer")


class Checkpointing:
    """Checkpoint and resume for one worker; every rank calls ``save_checkpoint`` at the same steps."""

    cfg: TrainerConfig
    info: dist.DistInfo
    hp: Hyperparameters
    metric: str
    out: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    state: State
    guard: StepGuard
    ckpt: CheckpointManager | None
    metrics: Any
    progress: Progress

    def _checkpoints(self) -> Any:
        ck = self.cfg.checkpoint
        if not ck.storage:
            return None
        from finetune_trainer.checkpoint import CheckpointManager

        url = contract.job_prefix(ck.storage, self.cfg.namespace, self.cfg.job_name, self.cfg.job_uid)
        mode = "min" if self.metric in evaluate.LOWER_IS_BETTER else "max"
        return CheckpointManager(
            url, rank=self.info.rank, world_size=self.info.world_size, keep_last=ck.keep_last,
            keep_best=ck.keep_best, metric_mode=mode, staging_dir=self.out / ".staging" / f"rank{self.info.rank}",
        )

    def resume(self) -> bool:
        """Continue from the newest committed checkpoint, if any. Returns whether it did."""
        if self.ckpt is None:
            return False
        info = self.ckpt.latest()
        if info is None:
            return False
        state, rank_state = self.ckpt.load(info, map_location=self.info.device)
        load_checkpoint_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = State(**state["trainer"])
        self.guard.restore()
        if rank_state:
            restore_rng(rank_state)
        self.progress.start_step = self.state.step
        self.progress.checkpointed(info.step, self.ckpt.uri(info.step), created(info.manifest))
        self.progress.message("resumed from checkpoint at step %d (%s)", self.state.step, info.key)
        return True

    def _on_saved(self, stats: SaveStats) -> None:
        """After each save's upload (on the upload thread; inline for a blocking save)."""
        self.metrics.observe_checkpoint(seconds=stats.blocked_seconds, nbytes=stats.bytes)
        if stats.committed and self.ckpt is not None:
            self.progress.checkpointed(stats.step, self.ckpt.uri(stats.step))

    def _weights_from_checkpoint(self, step: int) -> dict[str, torch.Tensor] | None:
        """The model weights of the committed checkpoint at ``step``, or None (with a message) without one."""
        from finetune_trainer.checkpoint_format import CorruptCheckpointError

        ckpt = self.ckpt
        info = ckpt.at(step) if ckpt is not None else None
        if ckpt is not None and info is not None:
            try:
                state, _ = ckpt.load(info, map_location=self.info.device)
                self.progress.message("best weights (step %d) loaded from %s", step, info.key)
                return state["model"]
            except CorruptCheckpointError as e:
                log.warning("%s", e)
        self.progress.message("best weights (step %d) predate a restart and no checkpoint of that step is kept; "
                              "keeping the final ones", step)  # fmt: skip
        return None

    def save_checkpoint(self, *, blocking: bool = False, metric: float | None = None) -> None:
        if self.ckpt is None:
            return
        state = {
            "model": checkpoint_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "trainer": asdict(self.state),
        }
        self.ckpt.save(self.state.step, state, rank_state=rng_state(), metric=metric, blocking=blocking)


def created(manifest: dict[str, Any]) -> float | None:
    """When a checkpoint was committed (its manifest's ``created``), as a Unix time; None when not said."""
    try:
        return datetime.fromisoformat(manifest["created"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None
