"""The local backend: the same FineTuneJob file a cluster gets, run by torchrun on this machine.

The job's spec becomes a TrainerConfig (exactly what the operator hands a pod), the data and model are checked
before any process starts (so bad input is one clear line, not a stack of worker tracebacks), and torchrun
starts ``nodes x processesPerNode`` workers, or ``--nproc`` of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from finetune_operator.api import FineTuneJob
from finetune_operator.steps import export_args, publish_args, trainer_config
from finetune_trainer.config import TrainerConfig
from finetune_trainer.contract import PROGRESS_FILE

CHECKPOINT_DIR = "checkpoints"


@dataclass
class LocalRun:
    """Where one local run writes everything."""

    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "trainer-config.json"

    @property
    def model(self) -> Path:
        return self.dir / "model"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def plot(self) -> Path:
        return self.dir / "training_curve.png"

    @property
    def export(self) -> Path:
        return self.dir / "export"

    @property
    def progress(self) -> Path:
        return self.dir / PROGRESS_FILE


def preflight(cfg: TrainerConfig) -> None:
    """Check sources, columns and labels in this process; raises InputError naming what is wrong."""
    from finetune_trainer import data as D
    from finetune_trainer.limits import check_sequence_length
    from finetune_trainer.model_check import check_recipe
    from finetune_trainer.roles import load_roles

    cache = Path(cfg.output_dir) / ".cache"
    ds = cfg.dataset
    check_sequence_length(cfg.model, cfg.hyperparameters, cache)
    roles = load_roles(ds, cfg.task, cfg.hold_out_seed, cache)
    names = roles.label_names
    for split in (roles.train, roles.validation, roles.test):
        if split is not None:
            D.encode_labels(split, names, cfg.task)
    check_recipe(cfg, names, cache)
    if ds.augmentation is not None:
        from finetune_trainer import augment

        augment.check(ds.augmentation, cache)
    if cfg.pretraining is not None:
        from finetune_trainer import pretrain

        pretrain.check(cfg, cache)


def standalone_command(config: Path, nproc: int, max_restarts: int = 0) -> list[str]:
    """torchrun on this machine alone: ``nproc`` workers, no rendezvous server."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}", "-m", "finetune_trainer", "train", "--config", str(config),
    ]


def new_run_dir(root: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{name}-{stamp}-{n}"
    return path


def launch(job: FineTuneJob, run: LocalRun, *, nproc: int | None = None, max_restarts: int = 0,
           metrics_port: int | None = None, split_seed: int | None = None) -> int:
    """Write the trainer config, check the inputs, run torchrun; returns its exit code.

    Raises:
        InputError: the data or model cannot be used (nothing was started).
    """
    run.dir.mkdir(parents=True, exist_ok=True)
    cfg = trainer_config(
        job, str(run.dir), checkpoint_storage=str(run.dir / CHECKPOINT_DIR), progress_file=str(run.progress),
        metrics_port=metrics_port, split_seed=split_seed,
    )
    run.config.write_text(cfg.to_json(), encoding="utf-8")
    preflight(cfg)
    procs = nproc or job.spec.resources.world_size
    env = dict(os.environ)
    # torchrun sets OMP_NUM_THREADS=1 for several processes; on CPU share the cores instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // procs)))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return subprocess.call(standalone_command(run.config, procs, max_restarts), env=env)


def prepare_repository(job: FineTuneJob) -> None:
    """Create a local ``spec.serving.repository`` folder (an s3:// one needs nothing)."""
    repository = job.spec.serving.repository or ""
    if "://" not in repository or repository.startswith("file://"):
        Path(repository.removeprefix("file://")).mkdir(parents=True, exist_ok=True)


def export_and_publish(job: FineTuneJob, run: LocalRun) -> int:
    """Export the trained model to ONNX and publish it into ``spec.serving.repository``, as the export pod does."""
    prepare_repository(job)
    trainer = [sys.executable, "-m", "finetune_trainer"]
    code = subprocess.call([*trainer, *export_args(job, str(run.model), str(run.export))])
    if code == 0:
        code = subprocess.call([*trainer, *publish_args(job, str(run.export))])
    return code


def summary(run: LocalRun) -> str:
    """Human summary of a finished run: where things are and the headline metrics."""
    lines = [f"run:     {run.dir}", f"model:   {run.model}", f"metrics: {run.metrics}", f"plot:    {run.plot}"]
    report = run.export / "export_report.json"
    if report.exists():
        lines.append(f"export:  {run.export}")
    if run.metrics.exists():
        m = json.loads(run.metrics.read_text(encoding="utf-8"))
        for split in ("validation", "test"):
            if m.get(split):
                shown = {k: round(v, 4) for k, v in m[split].items() if isinstance(v, float)}
                head = {k: shown[k] for k in ("accuracy", "f1_macro", "f1_micro", "mse", "pearson") if k in shown}
                lines.append(f"{split + ':':8} {' '.join(f'{k}={v}' for k, v in head.items())}")
        t = m.get("throughput", {})
        lines.append(f"speed:   {t.get('samples_per_second', 0):.1f} samples/s, {m.get('steps')} steps")
        if pre := m.get("pretraining"):
            lines.append(f"pretraining: masked-LM loss {pre['masked_lm_loss_before']:.4f} -> "
                         f"{pre['masked_lm_loss_after']:.4f} in {pre['steps']} steps")
    return "\n".join(lines)
