"""The export and publish command lines for a job: one definition for the local backend and the export pod."""

from __future__ import annotations

from finetune_operator import api


def export_args(job: api.FineTuneJob, model_dir: str, out_dir: str) -> list[str]:
    """``python -m finetune_trainer`` arguments that export the trained model in ``model_dir``."""
    args = ["export", "--model", model_dir, "--out", out_dir]
    if job.spec.serving.quantize:
        args.append("--int8")
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
