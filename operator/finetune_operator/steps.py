"""What each step of a job is given, built from its spec: the trainer's config and the export and publish
command lines. One definition for the local backend (local.py) and the cluster's builders (resources.py)."""

from __future__ import annotations

from finetune_operator import api
from finetune_trainer.config import TrainerConfig


def trainer_config(job: api.FineTuneJob, output_dir: str, *, checkpoint_storage: str | None = None,
                   progress_file: str | None = None, metrics_port: int | None = None,
                   uid: str | None = None, split_seed: int | None = None) -> TrainerConfig:
    """The trainer's config for ``job``: its trainer sections plus where this run writes (``uid`` keys the
    job's storage folder on a cluster; a local run has none; ``split_seed``: see TrainerConfig)."""
    spec = job.spec
    checkpoint = spec.checkpoint
    if checkpoint_storage and not checkpoint.storage:
        checkpoint = checkpoint.model_copy(update={"storage": checkpoint_storage})
    return TrainerConfig(
        job_name=job.metadata.name,
        namespace=job.metadata.namespace or "default",
        job_uid=uid,
        output_dir=output_dir,
        model=spec.model,
        dataset=spec.dataset,
        task=spec.task,
        hyperparameters=spec.hyperparameters,
        checkpoint=checkpoint,
        output_uri=spec.output,
        metrics_port=metrics_port,
        progress_file=progress_file,
        profiling=spec.profiling,
        distillation=spec.distillation,
        pretraining=spec.pretraining,
        split_seed=split_seed,
    )


def export_args(job: api.FineTuneJob, model_dir: str, out_dir: str) -> list[str]:
    """``python -m finetune_trainer`` arguments that export the trained model in ``model_dir``.

    No preprocessing is passed: the export reads the definition training recorded beside the model
    (``preprocessing.json``: max length, truncation, head tokens, cleaning, text pair), so the served tokenizer
    cannot drift from the job. ``--text-pair`` only matters for a model folder trained before it was recorded.
    """
    args = ["export", "--model", model_dir, "--out", out_dir]
    if job.spec.serving.quantize:
        args.append("--int8")
    if job.spec.serving.backend == "tensorrt":  # fail at the export's start on a node that cannot build the engine
        args.append("--require-tensorrt")
    if job.spec.dataset.text_pair_column:
        args.append("--text-pair")
    return args


def publish_args(job: api.FineTuneJob, export_dir: str, *, gpu: bool = False, key: str | None = None) -> list[str]:
    """``python -m finetune_trainer`` arguments that publish ``export_dir`` as a new model version; with ``key``
    (the job's uid) a retried publication confirms the version it already wrote instead of adding one."""
    serving = job.spec.serving
    kind = "KIND_GPU" if gpu and serving.backend != "python" else "KIND_CPU"
    args = ["publish", "--export", export_dir, "--repository", serving.repository or ""]
    args += ["--name", serving.model_name or job.metadata.name, "--backend", str(serving.backend)]
    args += ["--max-batch-size", str(serving.max_batch_size), "--instance-kind", kind]
    args += ["--instance-count", str(serving.instances)]
    if serving.quantize:
        args += ["--variant", "int8"]
    if serving.triton_url:
        args += ["--triton-url", serving.triton_url]
    if key:
        args += ["--idempotency-key", key]
    return args
