"""The training loop: DDP, AMP, gradient accumulation, clipping, scheduling, evaluation, early stopping and the
run's summary. ``fit(config)`` is everything a worker process does. What a run starts from is run_setup.py's;
checkpoint and resume train_checkpoints.py's; scoring a split train_eval.py's; the saved outputs run_summary.py's."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from finetune_trainer import contract, dist, evaluate, profiling, run_stats, run_summary
from finetune_trainer import data as D
from finetune_trainer.config import TaskType, TrainerConfig
from finetune_trainer.errors import InputError
from finetune_trainer.guards import Resized, StepGuard
from finetune_trainer.model import (
    checkpoint_state,
    load_checkpoint_state,
    load_model,
    param_groups,
    parameter_counts,
    prepare,
)
from finetune_trainer.progress import Progress
from finetune_trainer.run_setup import (
    Preempted,
    Prepared,
    State,
    fused_adamw,
    prepare_data,
    resolve_precision,
    seed_everything,
)
from finetune_trainer.train_checkpoints import Checkpointing
from finetune_trainer.train_eval import Evaluation

log = logging.getLogger("finetune_trainer")


class Trainer(Checkpointing, Evaluation):
    """One worker's view of a fine-tuning run."""

    def __init__(self, cfg: TrainerConfig, info: dist.DistInfo, prepared: Prepared):
        self.cfg, self.info, self.p = cfg, info, prepared
        hp = cfg.hyperparameters
        self.hp, self.task = hp, cfg.task.type
        self.metric = hp.metric_for_best_model or evaluate.default_metric(self.task)
        self.out = Path(cfg.output_dir)
        seed_everything(hp.seed)
        model = load_model(cfg.model, self.task, prepared.label_names, self.out / ".cache", hp.head_dropout)
        model = prepare(model, hp)
        self.model = model.to(info.device)
        self.run_stats = {"splits": prepared.stats, **run_stats.model_stats(self.model, info.device, info.world_size)}
        self.ddp = DDP(self.model) if info.enabled else None
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, hp), lr=hp.learning_rate, betas=(hp.adam_beta1, hp.adam_beta2),
            eps=hp.adam_epsilon, fused=fused_adamw(info.device),
        )
        self.amp_dtype = resolve_precision(hp.precision, info.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        weights = D.balanced_weights(prepared.train.labels) if hp.balanced_sampling else None
        self.sampler = D.EpochSampler(
            len(prepared.train), rank=info.rank, world_size=info.world_size, seed=hp.seed, weights=weights,
            lengths=prepared.train.lengths if hp.group_by_length else None, batch_size=hp.batch_size,
        )
        self.collate = D.Collator(prepared.tokenizer.pad_token_id or 0, 8 if info.device.type == "cuda" else 1)
        self.distiller = None
        if cfg.distillation is not None:
            from finetune_trainer import distill

            self.distiller = distill.Distiller(cfg.distillation, prepared.teacher_inputs, prepared.label_names,
                                               self.out / ".cache", info, hp.batch_size)
            self.collate = distill.Collate(self.collate, self.distiller)
        self.micro_per_epoch = math.ceil(self.sampler.per_rank / hp.batch_size)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / hp.gradient_accumulation_steps)
        self.total_steps = hp.max_steps or math.ceil(hp.epochs * self.steps_per_epoch)
        self.scheduler = self._scheduler()
        self.loss_fn = self._loss_fn()
        self.state = State()
        self.guard = StepGuard(self)
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.last_eval: tuple[int, dict[str, Any]] | None = None
        self.stop_requested = False
        self.ckpt = self._checkpoints()
        self.metrics = self._metrics()
        if self.ckpt is not None:
            self.ckpt.on_saved = self._on_saved
        sink = None
        if self.ckpt is not None:
            store = self.ckpt.storage
            sink = lambda payload: store.put_bytes(contract.PROGRESS_FILE, payload)  # noqa: E731
        self.progress = Progress(
            self.total_steps, enabled=info.is_main, progress_file=cfg.progress_file, start_step=self.state.step,
            sink=sink, stage=contract.STAGE_FINETUNING if cfg.pretraining else None,
        )
        self.pretraining: dict[str, Any] | None = None  # spec.pretraining's summary, for metrics.json
        self.timings: dict[str, float] = {}  # where this process's time went, for metrics.json
        self.profiler = profiling.create(cfg.profiling, info.rank, info.world_size, self.out / "profile",
                                         self.ckpt.storage if self.ckpt is not None else None)
        for line in run_stats.describe(self.run_stats):
            self.progress.message("%s", line)

    # --- construction ------------------------------------------------------------------------------------

    def _scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        from transformers import get_scheduler

        hp = self.hp
        warmup = hp.warmup_steps if hp.warmup_steps is not None else round((hp.warmup_ratio or 0) * self.total_steps)
        name = "constant_with_warmup" if hp.scheduler == "constant" else hp.scheduler
        return get_scheduler(name, self.optimizer, num_warmup_steps=warmup, num_training_steps=self.total_steps)

    def _loss_fn(self) -> torch.nn.Module:
        labels, n = self.p.train.labels, len(self.p.label_names)
        cw = self.hp.class_weights
        weight = None
        if isinstance(cw, list):
            if len(cw) != n:
                raise InputError(f"hyperparameters.classWeights has {len(cw)} weights for {n} labels")
            weight = torch.tensor(cw, dtype=torch.float32)
        elif cw == "balanced" and self.task != TaskType.REGRESSION:
            weight = torch.from_numpy(D.class_weights(labels, n))
        if weight is not None:
            weight = weight.to(self.info.device)
        if self.task == TaskType.REGRESSION:
            return torch.nn.MSELoss()
        if self.task == TaskType.MULTI_LABEL:
            return torch.nn.BCEWithLogitsLoss(pos_weight=weight)
        return torch.nn.CrossEntropyLoss(weight=weight)

    def _metrics(self) -> Any:
        from finetune_trainer.metrics import TrainingMetrics

        port = self.cfg.metrics_port
        m = TrainingMetrics(self.cfg.job_name, self.info.rank, port + self.info.local_rank if port else None)
        m.start_server()
        m.set_total_steps(self.total_steps)
        return m

    # --- the loop ----------------------------------------------------------------------------------------

    def _forward(self, batch: dict[str, torch.Tensor], module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch.pop("labels")
        teacher = batch.pop("teacher_logits", None)
        with torch.autocast(self.info.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            logits = module(**batch).logits
        logits = logits.float()
        if self.task == TaskType.REGRESSION:
            return self.loss_fn(logits.squeeze(-1), labels), logits
        loss = self.loss_fn(logits, labels)
        if teacher is not None:
            loss = self.distiller.loss(loss, logits, teacher)
        return loss, logits

    def _should_checkpoint(self, last_save: float) -> bool:
        ck = self.cfg.checkpoint
        if self.ckpt is None:
            return False
        due = bool(ck.every_steps and self.state.step % ck.every_steps == 0)
        if ck.every_minutes and time.monotonic() - last_save >= ck.every_minutes * 60:
            due = True
        return dist.any_flag(due, self.info) if ck.every_minutes else due

    def run(self) -> dict[str, Any]:
        """The training loop from the current state to the final save; the final metrics."""
        hp, st, info = self.hp, self.state, self.info
        module = self.ddp or self.model
        self.timings["run_started"] = time.perf_counter()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        window_loss, window_n, window_samples, window_tokens = 0.0, 0, 0, 0
        window_start = time.perf_counter()
        last_save = time.monotonic()
        stopped_early = False
        prof = self.profiler
        prof.after_step(st.step)
        try:
            while st.step < self.total_steps and not stopped_early:
                self._epoch_data(st.epoch)
                accum = hp.gradient_accumulation_steps  # autoBatchSize may change it (guards.StepGuard)
                self.sampler.set_epoch(st.epoch, start=st.batches_in_epoch * hp.batch_size)
                self.model.train()
                micro = st.batches_in_epoch
                for batch in prof.data(D.batches(self.p.train, self.sampler, hp.batch_size, self.collate)):
                    micro += 1
                    boundary = micro % accum == 0 or micro == self.micro_per_epoch
                    window_samples += batch["input_ids"].shape[0]
                    window_tokens += int(batch["attention_mask"].sum())  # still on the host: no device sync
                    batch = {k: v.to(info.device, non_blocking=True) for k, v in batch.items()}
                    sync = contextlib.nullcontext() if boundary or self.ddp is None else self.ddp.no_sync()
                    try:
                        with sync:
                            window_loss += self.guard.micro_step(batch, module, boundary)
                    except Resized:
                        break  # the window restarts at the new micro-batch size
                    window_n += 1
                    if not boundary:
                        continue
                    with prof.phase("optimizer"):
                        grad_norm = self._optimizer_step()
                    st.step += 1
                    prof.after_step(st.step)
                    st.batches_in_epoch = micro
                    if st.step % hp.log_every_steps == 0 or st.step == self.total_steps:
                        elapsed = time.perf_counter() - window_start
                        mean_loss = float(window_loss) / max(window_n, 1)  # the window's one read of the loss
                        self._log_step(mean_loss, grad_norm, window_samples, window_tokens, elapsed)
                        window_loss, window_n, window_samples, window_tokens = 0.0, 0, 0, 0
                        window_start = time.perf_counter()
                    metric = None
                    if hp.eval_steps and st.step % hp.eval_steps == 0:
                        metric, stopped_early = self._evaluate_and_track()
                    if self._should_checkpoint(last_save):
                        self.save_checkpoint(metric=metric)
                        last_save = time.monotonic()
                    if dist.any_flag(self.stop_requested, info):
                        self.progress.message("SIGTERM: saving a final checkpoint at step %d", st.step)
                        self.save_checkpoint(blocking=True)
                        self.progress.write(st.step, st.epoch, {}, "training")  # with the final checkpoint
                        raise Preempted(st.step)
                    if st.step >= self.total_steps or stopped_early:
                        break
                else:
                    st.epoch += 1
                    st.batches_in_epoch = 0
                    if not hp.eval_steps:
                        _, stopped_early = self._evaluate_and_track()
                    continue
            if not st.evals or st.evals[-1]["step"] != st.step:
                self._evaluate_and_track()
            if self.ckpt is not None:
                self.ckpt.wait()
            return self._finish(stopped_early)
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.progress.close()

    def _epoch_data(self, epoch: int) -> None:
        """With augmentation each epoch has its own copies, a pure function of seed and epoch (so resume holds)."""
        if self.p.train_for_epoch is not None:
            self.p.train = self.p.train_for_epoch(epoch)
            if self.sampler.lengths is not None:
                self.sampler.lengths = self.p.train.lengths

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _optimizer_step(self) -> torch.Tensor | None:
        """Clip, step and schedule; returns the gradient norm as a device tensor (read only when logged)."""
        if not self.guard.step_is_finite(self.state.step + 1):  # a non-finite loss: drop the step's gradients
            self.optimizer.zero_grad(set_to_none=True)
            return None
        grad_norm = None
        if self.hp.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.hp.max_grad_norm).detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _log_step(self, loss: float, grad_norm: torch.Tensor | None, samples: int, tokens: int,
                  seconds: float) -> None:
        st, info = self.state, self.info
        grad_norm = float(grad_norm) if grad_norm is not None else None
        loss = dist.mean(loss, info)
        samples_all, tokens_all = samples * info.world_size, tokens * info.world_size
        st.samples += samples_all
        lr = self.scheduler.get_last_lr()[0]
        epoch = st.epoch + st.batches_in_epoch / max(self.micro_per_epoch, 1)
        values = {
            "loss": loss,
            "learning_rate": lr,
            "grad_norm": grad_norm if grad_norm is not None else float("nan"),
            "samples_per_second": samples_all / seconds if seconds else 0.0,
            "tokens_per_second": tokens_all / seconds if seconds else 0.0,
        }
        st.history.append({"step": st.step, "epoch": round(epoch, 4), **values})
        self.metrics.observe_step(
            step=st.step, epoch=epoch, loss=loss, learning_rate=lr, grad_norm=grad_norm, samples=samples,
            tokens=tokens, seconds=seconds,
        )
        self.progress.update(st.step, epoch, values)

    # --- evaluation --------------------------------------------------------------------------------------

    def _evaluate_and_track(self) -> tuple[float, bool]:
        """Evaluate on validation, remember the best weights, and say whether to stop early."""
        st = self.state
        result = self.evaluate(self.p.validation)
        self.last_eval = (st.step, result)
        flat = evaluate.scalars(result)
        if self.metric not in flat:
            raise InputError(
                f"hyperparameters.metricForBestModel {self.metric!r} is not one of {sorted(flat)} for this task"
            )
        st.evals.append({"step": st.step, **flat})
        value = flat[self.metric]
        self.metrics.observe_eval(flat)
        es = self.hp.early_stopping
        if evaluate.improved(value, st.best_metric, self.metric, es.min_delta if es else 0.0):
            st.best_metric, st.best_step, st.bad_evals = value, st.step, 0
            if self.info.is_main:
                trained = checkpoint_state(self.model)
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in trained.items()}
        else:
            st.bad_evals += 1
        shown = {k: round(v, 4) for k, v in flat.items() if k in ("loss", "accuracy", "f1_macro", "mse", "pearson")}
        self.progress.message("eval step=%d %s best_%s=%.4f", st.step, shown, self.metric, st.best_metric)
        self.progress.write(st.step, st.epoch, {**flat, "eval": 1.0}, "training")
        stop = bool(es and st.bad_evals >= es.patience)
        if stop:
            self.progress.message("early stopping: %s did not improve for %d evaluations", self.metric, es.patience)
        return value, stop

    # --- the end -----------------------------------------------------------------------------------------

    def _finish(self, stopped_early: bool) -> dict[str, Any]:
        st = self.state
        checksums = dist.gather(run_summary.checksum(self.model), self.info)
        reuse = self.last_eval if self.last_eval and self.last_eval[0] == st.best_step == st.step else None
        if st.best_step is not None and st.best_step != st.step:
            best = self.best_weights
            if best is None and self.info.is_main:  # found before a restart: the best checkpoint holds them
                best = self._weights_from_checkpoint(st.best_step)
            if best is not None:
                load_checkpoint_state(self.model, best)
            if self.info.enabled:  # every rank needs rank 0's chosen weights for the final evaluations
                for t in self.model.state_dict().values():
                    torch.distributed.broadcast(t, src=0)
        validation = reuse[1] if reuse else self.evaluate(self.p.validation)
        test = self.evaluate(self.p.test) if self.p.test is not None else None
        summary = {
            "job": self.cfg.job_name,
            "task": self.task,
            "labels": self.p.label_names,
            "steps": st.step,
            "total_steps": self.total_steps,
            "epochs": st.epoch + st.batches_in_epoch / max(self.micro_per_epoch, 1),
            "stopped_early": stopped_early,
            "best_metric": {"name": self.metric, "value": st.best_metric, "step": st.best_step},
            "world_size": self.info.world_size,
            "replica_checksums": checksums,
            "precision": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else "fp32",
            "train_samples": len(self.p.train),
            "parameters": parameter_counts(self.model),
            "validation": validation,
            "test": test,
            "history": st.history,
            "evals": st.evals,
            "throughput": run_summary.throughput(st.history),
            "batch_resizes": st.batch_resizes,
            "run_stats": self.run_stats,
            "peak_memory": run_summary.peak_memory(),
            "timings": self._timings(),
            **({"pretraining": self.pretraining} if self.pretraining else {}),
        }
        if self.info.is_main:
            run_summary.save_outputs(self.out, self.model, self.p, summary, self.metric, self.cfg.output_uri)
        self.progress.write(st.step, st.epoch, evaluate.scalars(validation), "completed")
        dist.barrier(self.info)  # leave together: no rank tears the group down while another still saves
        return summary

    def _timings(self) -> dict[str, float]:
        """Seconds of data preparation (load + tokenize), model set-up, training steps and evaluation."""
        t = dict(self.timings)
        if "run_started" in t:
            t["training_seconds"] = time.perf_counter() - t.pop("run_started") - t.get("evaluation_seconds", 0.0)
        return {k: round(v, 3) for k, v in t.items()}

    def close(self) -> None:
        self.profiler.close()
        if self.ckpt is not None:
            self.ckpt.close()
        self.metrics.close()


def fit(cfg: TrainerConfig) -> dict[str, Any]:
    """Train one job in this process (one rank of a torchrun group, or alone)."""
    info = dist.init()
    try:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        prepared = prepare_data(cfg, out / ".cache")
        data_seconds = time.perf_counter() - start
        from finetune_trainer import pretrain

        cfg, stage = pretrain.run_stage(cfg, info, prepared.tokenizer)  # the classifier starts from its encoder
        start = time.perf_counter()
        trainer = Trainer(cfg, info, prepared)
        trainer.timings.update(data_seconds=data_seconds, model_setup_seconds=time.perf_counter() - start)
        trainer.pretraining = stage
        try:
            trainer.resume()
            trainer.progress.begin(trainer.state.step, trainer.state.epoch)
            return trainer.run()
        finally:
            trainer.close()
    finally:
        dist.close()

