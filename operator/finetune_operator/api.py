"""The FineTuneJob API (finetune.dev/v1alpha1): the spec models.

This module is the one source of truth for the spec's CRD schema (crd.py writes manifests/crd.yaml from it and
from status.py), the defaults and the validation messages. The trainer-facing sections (model, dataset, task,
hyperparameters, checkpoint) are the trainer's own config models; this module adds what only a cluster needs.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import Field, field_validator, model_validator

from finetune_operator import kube_rules
from finetune_operator.ensemble_spec import EnsembleMethod, EnsembleSpec, resolve
from finetune_trainer.config import (
    CheckpointSpec,
    ConfigError,
    DatasetSpec,
    DistillationSpec,
    Hyperparameters,
    ModelSpec,
    PretrainingSpec,
    ProfilingSpec,
    S3Spec,
    Section,
    TaskSpec,
    TaskType,
    check_distillation,
    parse,
)

GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]
CATEGORIES = ["all", "ml"]
DEFAULT_IMAGE = "ghcr.io/finetune-operator/trainer:0.1.0"

QUANTITY = {"pattern": kube_rules.QUANTITY_PATTERN}  # in the CRD; kube_rules.quantity words the error


class Rendezvous(Section):
    """How long the worker pods wait for each other (torchrun's c10d rendezvous, hosted by node 0)."""

    join_timeout_seconds: int = Field(
        900,
        ge=10,
        le=86400,
        description="How long a worker waits for node 0's rendezvous store to come up, and then for every worker "
        "to join: a slow image pull on one node within it does not fail the group.",
    )
    read_timeout_seconds: int = Field(
        300, ge=10, le=3600, description="How long one operation on the rendezvous store may take."
    )


class Resources(Section):
    """How many workers and what each gets. World size = nodes x processesPerNode."""

    nodes: int = Field(1, ge=1, le=1024, description="Worker pods (torchrun --nnodes).")
    processes_per_node: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Processes per pod (torchrun --nproc-per-node); default gpusPerNode or 1.",
    )
    gpus_per_node: int = Field(0, ge=0, le=64, description="nvidia.com/gpu requested by each worker pod.")
    cpu: str | None = Field("2", json_schema_extra=QUANTITY, description="CPU request and limit per pod.")
    memory: str | None = Field(
        "8Gi", json_schema_extra=QUANTITY, description="Memory request and limit per pod."
    )
    shm_size: str | None = Field(
        "1Gi", json_schema_extra=QUANTITY, description="/dev/shm size (NCCL, loaders)."
    )
    rendezvous: Rendezvous = Rendezvous()

    _quantities = field_validator("cpu", "memory", "shm_size")(kube_rules.quantity)

    @property
    def procs(self) -> int:
        return self.processes_per_node or max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs


class ServingBackend(StrEnum):
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    PYTHON = "python"


class Serving(Section):
    """Export and publication into a Triton model repository after training."""

    enabled: bool = True
    repository: str | None = Field(None, description="Triton model repository: s3://bucket/prefix or a path.")
    model_name: str | None = Field(
        None, pattern=r"^[a-zA-Z0-9_.-]+$", description="Name in the repository (default: the job name)."
    )
    triton_url: str | None = Field(None, description="Triton HTTP endpoint used to load and check the model.")
    backend: ServingBackend = Field(ServingBackend.ONNXRUNTIME, description="Backend of the published model.")
    quantize: bool = Field(False, description="Also export an int8 dynamically quantized model.")
    max_batch_size: int = Field(32, ge=1, le=4096)
    instances: int = Field(1, ge=1, le=64, description="Model instances per Triton server.")
    s3: S3Spec | None = Field(
        None, description="S3 connection for the repository (same fields as checkpoint.s3)."
    )


class Toleration(Section):
    key: str | None = None
    operator: str | None = Field(None, pattern="^(Exists|Equal)$")
    value: str | None = None
    effect: str | None = Field(None, pattern="^(NoSchedule|PreferNoSchedule|NoExecute)$")
    toleration_seconds: int | None = None


class PodTemplate(Section):
    """Scheduling and image settings of the worker pods."""

    image: str | None = Field(None, description=f"Trainer image (default {DEFAULT_IMAGE}).")
    image_pull_policy: str | None = Field(None, pattern="^(Always|IfNotPresent|Never)$")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Names of registry Secrets.")
    service_account_name: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = Field(None, description="A core/v1 Affinity, passed through.")
    priority_class_name: str | None = None
    scheduler_name: str | None = Field(
        None, description="The scheduler of every pod (for example a gang scheduler's: scheduler-plugins or volcano)."
    )
    runtime_class_name: str | None = Field(None, description="A RuntimeClass for every pod (for example nvidia).")
    env: list[dict[str, Any]] = Field(default_factory=list, description="Extra core/v1 EnvVar entries.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    _labels = field_validator("labels", "node_selector")(kube_rules.labels)
    _annotations = field_validator("annotations")(kube_rules.annotations)
    _env = field_validator("env")(kube_rules.env)

    @field_validator("service_account_name", "priority_class_name", "scheduler_name", "runtime_class_name")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        return None if name is None else kube_rules.dns_subdomain(name)

    @field_validator("image_pull_secrets")
    @classmethod
    def _secret_names(cls, names: list[str]) -> list[str]:
        return [kube_rules.dns_subdomain(n) for n in names]


class FineTuneJobSpec(Section):
    """Desired state of a FineTuneJob."""

    model: ModelSpec
    dataset: DatasetSpec
    task: TaskSpec = TaskSpec()
    hyperparameters: Hyperparameters = Hyperparameters()
    resources: Resources = Resources()
    checkpoint: CheckpointSpec = CheckpointSpec()
    serving: Serving = Serving(enabled=False)
    template: PodTemplate = PodTemplate()
    profiling: ProfilingSpec | None = Field(
        None, description="Profile optimizer steps startStep..endStep of one rank (torch.profiler, NVTX)."
    )
    distillation: DistillationSpec | None = Field(
        None, description="Knowledge distillation from a teacher model (docs/recipes/distillation.md)."
    )
    pretraining: PretrainingSpec | None = Field(
        None, description="Masked-LM pretraining on unlabelled domain text before the classifier, in the same job "
        "(docs/recipes/pretraining.md)."
    )
    ensemble: EnsembleSpec | None = Field(
        None, description="Train several members and serve them as one model (docs/recipes/ensemble.md)."
    )
    output: str | None = Field(
        None, description="Where the final Hugging Face model is stored (s3:// or path)."
    )
    suspend: bool = Field(
        False, description="Delete the workers but keep the job; resume continues from a checkpoint."
    )
    backoff_limit: int = Field(3, ge=0, le=100, description="Worker-group restarts before the job fails.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail the job after this long admitted (time Queued or Suspended does not count)."
    )
    progress_deadline_seconds: int | None = Field(
        600, ge=30, le=604800, description="Set the Stalled condition (and its alert) when the step counter has not "
        "moved for this long while every worker runs; null: never."
    )  # fmt: skip
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete worker pods this long after the job finished."
    )

    @model_validator(mode="after")
    def _cross_section(self) -> Self:
        names, n = self.dataset.label_names, self.task.num_labels
        if self.task.type != TaskType.REGRESSION and names is not None and n is not None and len(names) != n:
            raise ValueError(f"task.numLabels is {n} but dataset.labelNames has {len(names)} names")
        if self.task.type == TaskType.REGRESSION and names:
            raise ValueError("dataset.labelNames is for classification; a regression task has none")
        if self.hyperparameters.balanced_sampling and self.task.type != TaskType.SINGLE_LABEL:
            raise ValueError("hyperparameters.balancedSampling needs task.type single_label_classification")
        if self.hyperparameters.precision == "fp16" and self.resources.gpus_per_node == 0:
            raise ValueError(
                "hyperparameters.precision fp16 needs GPUs (resources.gpusPerNode >= 1); use bf16"
            )
        if self.profiling and self.profiling.rank >= self.resources.world_size:
            raise ValueError(
                f"profiling.rank {self.profiling.rank} is not a rank of this job "
                f"(world size {self.resources.world_size})"
            )
        check_distillation(self.distillation, self.task, self.dataset)
        self._check_ensemble()
        if self.serving.enabled and not self.serving.repository:
            raise ValueError("serving.repository is required when serving.enabled is true")
        return self

    def _check_ensemble(self) -> None:
        ens = self.ensemble
        if ens is None:
            return
        try:
            resolve(ens, self.hyperparameters.seed, self.model)
        except ValueError as e:
            raise ValueError(f"ensemble.{e}") from None
        if ens.method == EnsembleMethod.VOTE and self.task.type != TaskType.SINGLE_LABEL:
            raise ValueError(f"ensemble.method vote needs task.type single_label_classification, got {self.task.type}")
        if self.serving.quantize or self.serving.backend == ServingBackend.TENSORRT:
            raise ValueError("ensemble is served as one fp32 ONNX graph: serving.quantize and serving.backend "
                             "tensorrt are not supported with it")


class Metadata(Section):
    model_config = Section.model_config | {"extra": "allow"}

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=52)
    namespace: str | None = None


class FineTuneJob(Section):
    """A whole FineTuneJob object as `kubectl apply` gets it."""

    model_config = Section.model_config | {"extra": "ignore"}

    api_version: str = Field(API_VERSION, pattern=f"^{GROUP}/{VERSION}$")
    kind: str = Field(KIND, pattern=f"^{KIND}$")
    metadata: Metadata
    spec: FineTuneJobSpec


def parse_job(obj: Any) -> FineTuneJob:
    """Validate a FineTuneJob object; raises ConfigError naming every wrong field."""
    return parse(FineTuneJob, obj, prefix="")


def parse_spec(spec: Any) -> FineTuneJobSpec:
    """Validate a FineTuneJob spec; raises ConfigError naming every wrong field as ``spec.<path>``."""
    return parse(FineTuneJobSpec, spec, prefix="spec")


def load_job_file(path: str | Path) -> FineTuneJob:
    """Read one FineTuneJob from a YAML file (the first document of that kind)."""
    p = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d]
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML ({e})"]) from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if not jobs:
        raise ConfigError([f"{path}: no document with kind: {KIND}"])
    try:
        return parse_job(jobs[0])
    except ConfigError as e:
        raise ConfigError([f"{path}: {line}" for line in e.errors]) from None


__all__ = [
    "API_VERSION",
    "ConfigError",
    "FineTuneJob",
    "FineTuneJobSpec",
    "load_job_file",
    "parse_job",
    "parse_spec",
]
