"""spec.pretraining's stage: masked-LM training of the job's encoder on domain text, before the classifier.

Every rank runs it under DDP, as the fine-tune runs. It keeps its own checkpoints under the job's folder
(``<job>/pretraining/checkpoint-*``), so a restart in the middle of it continues it from the newest one. When it
ends, each node writes the trained encoder to ``<outputDir>/pretrained-encoder`` and rank 0 uploads it to
``<job>/pretraining/encoder/`` and then writes ``<job>/pretraining/done.json`` (the stage's summary) last: a
restart that finds the marker skips the stage and fetches the encoder. The classifier stage then loads that
folder as its ``model.name``. The masked-LM loss on held-out domain text, with the same masks, is measured
before and after the stage and reported in metrics.json (``pretraining``).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from finetune_trainer import contract, dist
from finetune_trainer import data as D
from finetune_trainer import pretrain_data as PD
from finetune_trainer.config import ModelSpec, TrainerConfig
from finetune_trainer.errors import InputError
from finetune_trainer.model import NO_DECAY, load_tokenizer
from finetune_trainer.progress import Progress
from finetune_trainer.run_setup import restore_rng, rng_state
from finetune_trainer.sources import model_location

log = logging.getLogger("finetune_trainer")

ENCODER = f"{contract.PRETRAINING_DIR}/encoder"
DONE = f"{contract.PRETRAINING_DIR}/done.json"
LOCAL_ENCODER = "pretrained-encoder"


def load_masked_lm(spec: ModelSpec, cache_dir: Path, *, meta: bool = False) -> torch.nn.Module:
    """The job's model with a masked-LM head (a head the checkpoint lacks is initialised, seeded)."""
    from transformers import AutoConfig, AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    where = model_location(spec.name, "model.name", cache_dir)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized cls.predictions" is expected for an encoder-only folder
    try:
        if meta:
            config = AutoConfig.from_pretrained(where, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
            with torch.device("meta"):
                return AutoModelForMaskedLM.from_config(config, trust_remote_code=spec.trust_remote_code)
        return AutoModelForMaskedLM.from_pretrained(where, revision=spec.revision,
                                                    trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"pretraining: model.name {spec.name} cannot be trained as a masked language model: "
                         f"{e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def check(cfg: TrainerConfig, cache_dir: Path) -> None:
    """Before any worker starts: the domain text loads and has its column, and the model can take the stage."""
    assert cfg.pretraining is not None
    PD.load_texts(cfg.pretraining, cache_dir)
    PD.check_tokenizer(load_tokenizer(cfg.model, cache_dir))
    load_masked_lm(cfg.model, cache_dir, meta=True)


def run_stage(cfg: TrainerConfig, info: dist.DistInfo, tokenizer: Any) -> tuple[TrainerConfig, dict | None]:
    """Run (or skip, when a previous attempt finished it) the stage; the config the classifier stage trains
    with (``model.name`` is the trained encoder) and the stage's summary."""
    if cfg.pretraining is None:
        return cfg, None
    local = Path(cfg.output_dir) / LOCAL_ENCODER
    store = _job_storage(cfg)
    summary = json.loads(store.get_bytes(DONE)) if store is not None and store.exists(DONE) else None
    if summary is None:
        stage = Stage(cfg, info, tokenizer, store)
        try:
            summary = stage.run(local)
        finally:
            stage.close()
    else:
        if info.local_rank == 0:
            for key in store.list(ENCODER + "/"):
                store.get_file(key, local / key.rpartition("/")[2])
        dist.barrier(info)
        if info.is_main:
            log.info("pretraining stage already complete (%d steps): the classifier starts from its encoder",
                     summary["steps"])
    model = cfg.model.model_copy(update={"name": str(local), "revision": None})
    return cfg.model_copy(update={"model": model}), summary


def _job_storage(cfg: TrainerConfig) -> Any:
    if not cfg.checkpoint.storage:
        return None
    from finetune_trainer.storage import open_storage

    return open_storage(contract.job_prefix(cfg.checkpoint.storage, cfg.namespace, cfg.job_name, cfg.job_uid))


@dataclass
class StageState:
    """Replicated counters saved in every checkpoint of the stage."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    loss_before: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)


class Stage:
    """One worker's view of the masked-LM stage."""

    def __init__(self, cfg: TrainerConfig, info: dist.DistInfo, tokenizer: Any, store: Any):
        from transformers import get_scheduler

        from finetune_trainer.run_setup import fused_adamw, resolve_precision, seed_everything

        spec, hp = cfg.pretraining, cfg.hyperparameters
        assert spec is not None
        self.cfg, self.info, self.spec, self.hp, self.store, self.tokenizer = cfg, info, spec, hp, store, tokenizer
        cache = Path(cfg.output_dir) / ".cache"
        PD.check_tokenizer(tokenizer)
        train, held = PD.split(PD.load_texts(spec, cache), spec.validation_split, hp.seed)
        encode = lambda texts: PD.tokenize(texts, tokenizer, hp.max_seq_length,  # noqa: E731
                                           tuple(cfg.dataset.cleaning), spec.whole_word_mask)
        self.train, self.held = encode(train), encode(held)
        self.masker = PD.Masker(tokenizer, spec)
        seed_everything(hp.seed)
        self.model = load_masked_lm(cfg.model, cache).to(info.device)
        self.ddp = DDP(self.model) if info.enabled else None
        self.batch = spec.batch_size or hp.batch_size
        decays: dict[bool, list[torch.nn.Parameter]] = {True: [], False: []}
        for name, p in self.model.named_parameters():
            decays[not any(tag in name for tag in NO_DECAY)].append(p)
        groups = [{"params": decays[True], "weight_decay": hp.weight_decay},
                  {"params": decays[False], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=spec.learning_rate or hp.learning_rate,
                                           betas=(hp.adam_beta1, hp.adam_beta2), eps=hp.adam_epsilon,
                                           fused=fused_adamw(info.device))
        self.amp_dtype = resolve_precision(hp.precision, info.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.sampler = D.EpochSampler(len(self.train), rank=info.rank, world_size=info.world_size, seed=hp.seed)
        self.per_epoch = math.ceil(self.sampler.per_rank / self.batch)
        self.total = spec.max_steps or max(1, math.ceil((spec.epochs or 1.0) * self.per_epoch))
        warmup = hp.warmup_steps if hp.warmup_steps is not None else round((hp.warmup_ratio or 0) * self.total)
        self.scheduler = get_scheduler("linear", self.optimizer, num_warmup_steps=warmup,
                                       num_training_steps=self.total)
        self.state = StageState()
        self.stop_requested = False
        self.ckpt = None
        if store is not None:
            from finetune_trainer.checkpoint import CheckpointManager

            self.ckpt = CheckpointManager(
                f"{store.url}/{contract.PRETRAINING_DIR}", rank=info.rank, world_size=info.world_size,
                keep_last=cfg.checkpoint.keep_last, keep_best=False,
                staging_dir=Path(cfg.output_dir) / ".staging" / f"pretraining-rank{info.rank}",
            )
        sink = (lambda payload: store.put_bytes(contract.PROGRESS_FILE, payload)) if store is not None else None
        self.progress = Progress(self.total, enabled=info.is_main, progress_file=cfg.progress_file, sink=sink,
                                 stage=contract.STAGE_PRETRAINING)

    # --- checkpoint / resume -------------------------------------------------------------------------------

    def resume(self) -> bool:
        found = self.ckpt.latest() if self.ckpt is not None else None
        if found is None:
            return False
        state, rank_state = self.ckpt.load(found, map_location=self.info.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = StageState(**state["stage"])
        if rank_state:  # dropout draws from these
            restore_rng(rank_state)
        self.progress.start_step = self.state.step
        self.progress.message("pretraining resumed from checkpoint at step %d (%s)", self.state.step, found.key)
        return True

    def save_checkpoint(self, *, blocking: bool = False) -> None:
        if self.ckpt is None:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "stage": asdict(self.state)}
        self.ckpt.save(self.state.step, state, rank_state=rng_state(), blocking=blocking)

    # --- the loop ------------------------------------------------------------------------------------------

    def _loss(self, module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy over the masked tokens, and how many there were (a batch may have none)."""
        labels = batch.pop("labels")
        with torch.autocast(self.info.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            logits = module(**batch).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        return loss, int((labels != -100).sum())

    def run(self, local: Path) -> dict[str, Any]:
        """Train to the last step, save the encoder; the stage's summary."""
        resumed = self.resume()
        st, info = self.state, self.info
        if not resumed:
            st.loss_before = self.evaluate()
            self.progress.message("pretraining: masked-LM loss on %d held-out texts before the stage: %.4f",
                                  len(self.held), st.loss_before)
        module = self.ddp or self.model
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            while st.step < self.total:
                self.sampler.set_epoch(st.epoch, start=st.batches_in_epoch * self.batch)
                order, micro = list(self.sampler), st.batches_in_epoch
                self.model.train()
                for i in range(0, len(order), self.batch):
                    self._step(module, order[i : i + self.batch], micro)
                    micro += 1
                    st.step, st.batches_in_epoch = st.step + 1, micro
                    if self.cfg.checkpoint.every_steps and st.step % self.cfg.checkpoint.every_steps == 0:
                        self.save_checkpoint()
                    if dist.any_flag(self.stop_requested, info):
                        from finetune_trainer.run_setup import Preempted

                        self.progress.message("SIGTERM: saving a final pretraining checkpoint at step %d", st.step)
                        self.save_checkpoint(blocking=True)
                        raise Preempted(st.step)
                    if st.step >= self.total:
                        break
                else:
                    st.epoch, st.batches_in_epoch = st.epoch + 1, 0
            if self.ckpt is not None:
                self.ckpt.wait()
            return self._finish(local)
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.progress.close()

    def _step(self, module: torch.nn.Module, indices: list[int], micro: int) -> None:
        st, hp = self.state, self.hp
        seed = PD.batch_seed(hp.seed, st.epoch, micro, self.info.rank)
        batch = {k: v.to(self.info.device) for k, v in self.masker(self.train, indices, seed).items()}
        started = time.perf_counter()
        total, n = self._loss(module, batch)
        # Mean over this rank's masked tokens; DDP averages the ranks' gradients.
        self.scaler.scale(total / max(n, 1)).backward()
        if hp.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), hp.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        step = st.step + 1
        if step % hp.log_every_steps == 0 or step == self.total:
            loss = dist.mean(float(total) / max(n, 1), self.info)
            seconds = time.perf_counter() - started
            values = {"loss": loss, "learning_rate": self.scheduler.get_last_lr()[0],
                      "samples_per_second": len(indices) * self.info.world_size / seconds if seconds else 0.0}
            st.history.append({"step": step, **values})
            self.progress.update(step, st.epoch + (st.batches_in_epoch + 1) / max(self.per_epoch, 1), values)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean masked-LM loss per masked token on the held-out texts, with the same masks every time."""
        self.model.eval()
        total, count = 0.0, 0
        starts = range(self.info.rank * self.batch, len(self.held), self.batch * self.info.world_size)
        for start in starts:
            indices = list(range(start, min(start + self.batch, len(self.held))))
            batch = self.masker(self.held, indices, PD.batch_seed(self.hp.seed + 1, 0, start, 0))
            loss, n = self._loss(self.model, {k: v.to(self.info.device) for k, v in batch.items()})
            total, count = total + float(loss), count + n
        self.model.train()
        parts = dist.gather((total, count), self.info)
        return sum(t for t, _ in parts) / max(sum(c for _, c in parts), 1)

    # --- the end -------------------------------------------------------------------------------------------

    def _finish(self, local: Path) -> dict[str, Any]:
        st, spec = self.state, self.spec
        after = self.evaluate()
        self.progress.message("pretraining: masked-LM loss on the held-out texts after %d steps: %.4f (before %.4f)",
                              st.step, after, st.loss_before)
        summary = {
            "steps": st.step, "texts": len(self.train), "held_out_texts": len(self.held),
            "mask_probability": spec.mask_probability, "whole_word_mask": spec.whole_word_mask,
            "masked_lm_loss_before": st.loss_before, "masked_lm_loss_after": after, "history": st.history,
        }
        if self.info.local_rank == 0:  # every node keeps its own copy: the classifier loads it from there
            self.model.save_pretrained(local)
            self.tokenizer.save_pretrained(local)
        if self.info.is_main and self.store is not None:
            for f in sorted(local.iterdir()):
                self.store.put_file(f, f"{ENCODER}/{f.name}")
            self.store.put_bytes(DONE, json.dumps(summary).encode())  # last: the stage counts as done from here
            checkpoints = [k for k in self.store.list(f"{contract.PRETRAINING_DIR}/checkpoint-")]
            self.store.delete(checkpoints)  # never read again once the marker is there
        dist.barrier(self.info)
        return summary

    def close(self) -> None:
        if self.ckpt is not None:
            self.ckpt.close()
