"""The FineTuneJob API (finetune.dev/v1alpha1): spec and status models.

This module is the one source of truth for the CRD schema (``crd()``, written to manifests/crd.yaml), the
defaults and the validation messages. The trainer-facing sections (model, dataset, task, hyperparameters,
checkpoint) are the trainer's own config models; this module adds what only a cluster needs.
"""

from __future__ import annotations

import copy
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import Field, field_validator, model_validator

from finetune_operator import kube_rules
from finetune_trainer.config import (
    CheckpointSpec,
    ConfigError,
    DatasetSpec,
    Hyperparameters,
    ModelSpec,
    ProfilingSpec,
    S3Spec,
    Section,
    TaskSpec,
    TaskType,
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
    env: list[dict[str, Any]] = Field(default_factory=list, description="Extra core/v1 EnvVar entries.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    _labels = field_validator("labels", "node_selector")(kube_rules.labels)
    _annotations = field_validator("annotations")(kube_rules.annotations)
    _env = field_validator("env")(kube_rules.env)

    @field_validator("service_account_name", "priority_class_name")
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
    output: str | None = Field(
        None, description="Where the final Hugging Face model is stored (s3:// or path)."
    )
    suspend: bool = Field(
        False, description="Delete the workers but keep the job; resume continues from a checkpoint."
    )
    backoff_limit: int = Field(3, ge=0, le=100, description="Worker-group restarts before the job fails.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="Fail the job after this long.")
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
        if self.serving.enabled and not self.serving.repository:
            raise ValueError("serving.repository is required when serving.enabled is true")
        return self


class Condition(Section):
    type: str
    status: str = Field(pattern="^(True|False|Unknown)$")
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Progress(Section):
    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    percent: float = 0.0
    eta_seconds: float | None = None
    samples_per_second: float | None = None


class ModelStatus(Section):
    repository: str
    name: str
    version: int
    endpoint: str | None = None
    ready: bool = False


class FineTuneJobStatus(Section):
    """Observed state, written by the operator only."""

    model_config = Section.model_config | {"extra": "ignore"}

    phase: str = "Pending"
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    progress: Progress | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    restarts: int = 0
    attempt: int = 0
    start_time: str | None = None
    completion_time: str | None = None
    checkpoint: str | None = None
    model: ModelStatus | None = None
    message: str | None = None
    reason: str | None = None
    retry_after: str | None = Field(None, description="Earliest time the next worker group or export try may start.")
    export_attempt: int = 0
    export_start_time: str | None = None


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
    status: FineTuneJobStatus | None = None


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


# --- CRD generation --------------------------------------------------------------------------------------

_DROP = {"title", "additionalProperties", "discriminator", "$defs"}


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Convert a pydantic JSON Schema into a Kubernetes structural OpenAPI v3 schema."""
    if "$ref" in schema:
        target = defs[schema["$ref"].split("/")[-1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in schema.items() if k != "$ref"}}
        return _structural(merged, defs)
    out: dict[str, Any] = {}
    any_of = schema.get("anyOf")
    if any_of is not None:
        members = [m for m in any_of if m.get("type") != "null"]
        nullable = len(members) < len(any_of)
        if len(members) == 1:
            out = _structural({**members[0], **{k: v for k, v in schema.items() if k != "anyOf"}}, defs)
        else:
            # A union of shapes (e.g. "balanced" or [1.0, 2.0]): leave it to the validating webhook.
            out = {"x-kubernetes-preserve-unknown-fields": True}
            if "description" in schema:
                out["description"] = schema["description"]
        if nullable:
            out["nullable"] = True
            if out.get("default", 0) is None:
                out.pop("default")
        return out
    for key, value in schema.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if schema.get("type") == "object" and "properties" not in schema:
        if isinstance(schema.get("additionalProperties"), dict) and schema["additionalProperties"]:
            out["additionalProperties"] = _structural(schema["additionalProperties"], defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if "type" not in out and "enum" in out:
        out["type"] = "string"
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("default", 0) is None:
        out.pop("default")
    return out


def openapi_schema(model: type[Section]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition of FineTuneJob, generated from the models above."""
    spec = openapi_schema(FineTuneJobSpec)
    status = openapi_schema(FineTuneJobStatus)
    status["x-kubernetes-preserve-unknown-fields"] = True
    columns = [
        ("Phase", "string", ".status.phase", "Where the job is in its lifecycle"),
        ("Progress", "number", ".status.progress.percent", "Percent of training steps done"),
        ("Accuracy", "number", ".status.metrics.accuracy", "Latest evaluation accuracy"),
        ("Restarts", "integer", ".status.restarts", "Worker-group restarts"),
        ("Model", "string", ".status.model.name", "Published model"),
        ("Age", "date", ".metadata.creationTimestamp", ""),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/name": "finetune-operator"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": n, "type": t, "jsonPath": p, **({"description": d} if d else {})}
                        for n, t, p, d in columns
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A fine-tuning job: data to a trained, exported and served model.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    return (
        "# Generated from operator/finetune_operator/api.py by `finetune crd`. Do not edit.\n"
        + yaml.safe_dump(crd(), sort_keys=False, width=120)
    )


__all__ = [
    "API_VERSION",
    "ConfigError",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "crd",
    "crd_yaml",
    "load_job_file",
    "parse_job",
    "parse_spec",
]
