"""Triton model repository layout for one published classifier: pure functions, no I/O but package files.

One publication of name ``NAME`` is four Triton models (``model_names``)::

    NAME/                     the classifier: token ids in, logits out (what the export produced)
      config.pbtxt            onnxruntime_onnx | tensorrt_plan | python (model.py running onnxruntime)
      labels.txt              label names, one per line (label_filename of the logits output)
      <N>/model.onnx          (or model.plan; plus model.py for the python backend)
    NAME_tokenizer/           python backend: raw strings (TYPE_STRING) -> input_ids, attention_mask, ...
      config.pbtxt
      <N>/model.py, tokenizer.json, preprocessing.json, preprocessing.py (the trainer's encoder), ...
    NAME_postprocess/         python backend: logits -> LABEL (string) and PROBABILITIES
      config.pbtxt
      <N>/model.py, postprocessing.py (the trainer's, shared with offline prediction)
    NAME_text/                ensemble: TEXT -> tokenizer -> classifier -> postprocess -> LABEL, PROBABILITIES
      config.pbtxt
      1/                      an ensemble has one version; it runs the latest version of each step

The classifier, tokenizer and postprocess models are versioned in lockstep (version N of each comes from the
same export), so the ensemble always serves a consistent latest set, and a client that wants version N calls
the three models at version N itself (see ``finetune predict --version``).

Every config.pbtxt is built as Triton's ``ModelConfig`` protobuf (tritonclient's ``model_config_pb2``) and written
in its text format, and read back the same way (``parse_config``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from finetune_trainer import preprocessing

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
BACKENDS = ("onnxruntime", "python", "tensorrt")
TASKS = ("single_label_classification", "multi_label_classification", "regression")
INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU")
ENSEMBLE_VERSION = 1


@dataclass(frozen=True)
class ModelNames:
    """The Triton model names of one publication."""

    classifier: str
    tokenizer: str
    postprocess: str
    ensemble: str

    def all(self) -> tuple[str, str, str, str]:
        """In load order: the ensemble last, after the models it runs."""
        return (self.classifier, self.tokenizer, self.postprocess, self.ensemble)


def model_names(name: str) -> ModelNames:
    """Names of the four models published under ``name``."""
    return ModelNames(name, f"{name}_tokenizer", f"{name}_postprocess", f"{name}_text")


@dataclass(frozen=True)
class ServingSpec:
    """Everything the configs need to know about the exported model and how to serve it.

    ``versions`` is the list of versions the config serves (a ``specific`` version policy): publication adds
    a version to the config only once its files are complete, which is what makes it visible to Triton.
    An empty list renders ``latest { num_versions: 1 }``.
    """

    name: str
    labels: tuple[str, ...]
    task: str = "single_label_classification"
    inputs: tuple[str, ...] = TOKEN_INPUTS
    text_pair: bool = False
    max_sequence_length: int = 128
    pad_token: str = "[PAD]"
    pad_token_id: int = 0
    padding_side: str = "right"
    pad_to_multiple_of: int = 16
    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = (4, 8, 16, 32)
    max_queue_delay_us: int = 500
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1
    versions: tuple[int, ...] = ()
    threshold: float = 0.5
    intra_op_threads: int = 0
    extra_parameters: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"model name {self.name!r}: expected letters, digits, '-', '_' or '.'")
        if not self.labels:
            raise ValueError("labels: expected at least one label name")
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ValueError(f"instance_kind {self.instance_kind!r}: expected one of {', '.join(INSTANCE_KINDS)}")
        unknown = set(self.inputs) - set(TOKEN_INPUTS)
        if unknown or not {"input_ids", "attention_mask"} <= set(self.inputs):
            raise ValueError(f"inputs {list(self.inputs)}: expected input_ids, attention_mask[, token_type_ids]")
        if self.max_batch_size < 1 or self.instance_count < 1:
            raise ValueError("max_batch_size and instance_count: expected at least 1")
        if any(v < 1 for v in self.versions):
            raise ValueError(f"versions {list(self.versions)}: expected positive integers")

    @property
    def num_labels(self) -> int:
        return len(self.labels)


# ------------------------------------------------------------------------------------------ pbtxt pieces


def _tensor(tensors: Any, name: str, data_type: int, dims: Sequence[int], label_filename: str = "") -> None:
    tensor = tensors.add(name=name, data_type=data_type, dims=list(dims))
    if label_filename:
        tensor.label_filename = label_filename


def _parameters(config: mc.ModelConfig, params: dict[str, str]) -> None:
    for key, value in params.items():
        config.parameters[key].string_value = str(value)


def _version_policy(config: mc.ModelConfig, versions: Sequence[int]) -> None:
    """``specific`` for the listed versions; ``latest { num_versions: 1 }`` when none are listed."""
    if versions:
        config.version_policy.specific.versions.extend(sorted(set(versions)))
    else:
        config.version_policy.latest.num_versions = 1


def _dynamic_batching(config: mc.ModelConfig, spec: ServingSpec, wait: bool = True) -> None:
    """The classifier may wait ``max_queue_delay_us`` to fill a preferred batch; the cheap tokenizer and
    postprocess batch only what is already queued: a wait there would delay every text-in request."""
    batching = config.dynamic_batching
    batching.SetInParent()
    if wait:
        batching.preferred_batch_size.extend(s for s in spec.preferred_batch_sizes if s <= spec.max_batch_size)
        batching.max_queue_delay_microseconds = spec.max_queue_delay_us


def _instances(config: mc.ModelConfig, spec: ServingSpec, kind: str | None = None) -> None:
    kind_value = mc.ModelInstanceGroup.Kind.Value(kind or spec.instance_kind)
    config.instance_group.add(count=spec.instance_count, kind=kind_value)


def _token_tensors(tensors: Any, spec: ServingSpec) -> None:
    for name in spec.inputs:
        _tensor(tensors, name, mc.TYPE_INT64, [-1])


def _text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_config(text: str) -> mc.ModelConfig:
    """A config.pbtxt read back as Triton reads it; raises ``text_format.ParseError`` when it is not one."""
    return text_format.Parse(text, mc.ModelConfig())


def served_versions(config: mc.ModelConfig) -> list[int]:
    """The versions a ``specific`` version policy lists (empty for other policies)."""
    policy = config.version_policy
    return sorted(policy.specific.versions) if policy.WhichOneof("policy_choice") == "specific" else []


# ---------------------------------------------------------------------------------------------- configs


def classifier_config(spec: ServingSpec, backend: str = "onnxruntime") -> str:
    """config.pbtxt of the classifier: ``onnxruntime`` (production ONNX), ``tensorrt`` (model.plan) or
    ``python`` (the same model.onnx through onnxruntime inside Triton's Python backend)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    platform = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan", "python": ""}[backend]
    config = mc.ModelConfig(name=spec.name, platform=platform, backend=backend, max_batch_size=spec.max_batch_size)
    _version_policy(config, spec.versions)
    _token_tensors(config.input, spec)
    _tensor(config.output, "logits", mc.TYPE_FP32, [spec.num_labels], "labels.txt")
    _dynamic_batching(config, spec)
    _instances(config, spec, "KIND_GPU" if backend == "tensorrt" else None)
    if backend == "tensorrt":
        config.default_model_filename = "model.plan"
    elif backend == "onnxruntime":
        config.default_model_filename = "model.onnx"
    else:
        _parameters(config, {"onnx_file": "model.onnx", "intra_op_thread_count": str(spec.intra_op_threads)})
    return _text(config)


def tokenizer_config(spec: ServingSpec) -> str:
    """config.pbtxt of the python-backend tokenizer: TEXT (and TEXT_PAIR) strings -> token id tensors."""
    names = model_names(spec.name)
    config = mc.ModelConfig(name=names.tokenizer, backend="python", max_batch_size=spec.max_batch_size)
    _version_policy(config, spec.versions)
    _tensor(config.input, "TEXT", mc.TYPE_STRING, [1])
    if spec.text_pair:
        _tensor(config.input, "TEXT_PAIR", mc.TYPE_STRING, [1])
    _token_tensors(config.output, spec)
    _dynamic_batching(config, spec, wait=False)
    _instances(config, spec, "KIND_CPU")
    _parameters(config, {
        "max_sequence_length": str(spec.max_sequence_length),
        "pad_token": spec.pad_token,
        "pad_token_id": str(spec.pad_token_id),
        "padding_side": spec.padding_side,
        "pad_to_multiple_of": str(spec.pad_to_multiple_of),
    })  # fmt: skip
    return _text(config)


def postprocess_config(spec: ServingSpec) -> str:
    """config.pbtxt of the python-backend postprocess: logits -> LABEL and PROBABILITIES (softmax/sigmoid)."""
    names = model_names(spec.name)
    config = mc.ModelConfig(name=names.postprocess, backend="python", max_batch_size=spec.max_batch_size)
    _version_policy(config, spec.versions)
    _tensor(config.input, "logits", mc.TYPE_FP32, [spec.num_labels])
    _tensor(config.output, "LABEL", mc.TYPE_STRING, [1])
    _tensor(config.output, "PROBABILITIES", mc.TYPE_FP32, [spec.num_labels], "labels.txt")
    _dynamic_batching(config, spec, wait=False)
    _instances(config, spec, "KIND_CPU")
    _parameters(config, {"labels": json.dumps(list(spec.labels)), "task": spec.task, "threshold": str(spec.threshold)})
    return _text(config)


def ensemble_config(spec: ServingSpec) -> str:
    """config.pbtxt of the text-in ensemble: TEXT -> tokenizer -> classifier -> postprocess."""
    names = model_names(spec.name)
    text_inputs = {"TEXT": "TEXT"} | ({"TEXT_PAIR": "TEXT_PAIR"} if spec.text_pair else {})
    tokens = {name: name for name in spec.inputs}
    config = mc.ModelConfig(name=names.ensemble, platform="ensemble", max_batch_size=spec.max_batch_size)
    config.version_policy.latest.num_versions = 1
    for name in text_inputs:
        _tensor(config.input, name, mc.TYPE_STRING, [1])
    _tensor(config.output, "LABEL", mc.TYPE_STRING, [1])
    _tensor(config.output, "PROBABILITIES", mc.TYPE_FP32, [spec.num_labels], "labels.txt")
    for model, inputs, outputs in (
        (names.tokenizer, text_inputs, tokens),
        (names.classifier, tokens, {"logits": "logits"}),
        (names.postprocess, {"logits": "logits"}, {"LABEL": "LABEL", "PROBABILITIES": "PROBABILITIES"}),
    ):
        step = config.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        step.input_map.update(inputs)
        step.output_map.update(outputs)
    _parameters(config, {"labels": json.dumps(list(spec.labels))})
    return _text(config)


# ----------------------------------------------------------------------------------------------- layout


def template(name: str) -> bytes:
    """The source of a python-backend model.py shipped in ``finetune_trainer/triton_models``."""
    return resources.files("finetune_trainer.triton_models").joinpath(f"{name}.py").read_bytes()


def labels_text(labels: Sequence[str]) -> bytes:
    return ("\n".join(labels) + "\n").encode()


def model_files(spec: ServingSpec, backend: str = "onnxruntime") -> dict[str, bytes]:
    """Model-level files (configs and label files), keyed by their path in the repository.

    ``spec.versions`` is what the versioned models' configs serve; write these files last.
    """
    names = model_names(spec.name)
    labels = labels_text(spec.labels)
    return {
        f"{names.classifier}/labels.txt": labels,
        f"{names.classifier}/config.pbtxt": classifier_config(spec, backend).encode(),
        f"{names.tokenizer}/config.pbtxt": tokenizer_config(spec).encode(),
        f"{names.postprocess}/labels.txt": labels,
        f"{names.postprocess}/config.pbtxt": postprocess_config(spec).encode(),
        f"{names.ensemble}/labels.txt": labels,
        f"{names.ensemble}/config.pbtxt": ensemble_config(spec).encode(),
    }


def version_files(
    spec: ServingSpec, version: int, export_dir: Path, backend: str = "onnxruntime", model_file: str = "model.onnx"
) -> dict[str, Path | bytes]:
    """Files of version ``version`` of the classifier, tokenizer and postprocess, keyed by repository path.

    Values are local paths (copied from ``export_dir``) or contents. ``model_file`` picks the exported
    variant served as the classifier (e.g. model.int8.onnx); it is always stored as model.onnx (model.plan
    for TensorRT).
    """
    names = model_names(spec.name)
    v = str(version)
    files: dict[str, Path | bytes] = {}
    served = "model.plan" if backend == "tensorrt" else "model.onnx"
    files[f"{names.classifier}/{v}/{served}"] = export_dir / model_file
    if backend == "python":
        files[f"{names.classifier}/{v}/model.py"] = template("onnx_classifier")
    for tok_file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", preprocessing.FILE):
        if (export_dir / tok_file).is_file():
            files[f"{names.tokenizer}/{v}/{tok_file}"] = export_dir / tok_file
    # The tokenizer encodes with the trainer's own preprocessing module, copied beside it (Triton has no trainer).
    files[f"{names.tokenizer}/{v}/preprocessing.py"] = resources.files("finetune_trainer").joinpath(
        "preprocessing.py"
    ).read_bytes()
    files[f"{names.tokenizer}/{v}/model.py"] = template("tokenizer")
    files[f"{names.postprocess}/{v}/model.py"] = template("postprocess")
    # The postprocess runs the trainer's own postprocessing module, copied beside it (Triton has no trainer).
    files[f"{names.postprocess}/{v}/postprocessing.py"] = (
        resources.files("finetune_trainer").joinpath("postprocessing.py").read_bytes()
    )
    return files


def ensemble_version_files(spec: ServingSpec) -> dict[str, bytes]:
    """The ensemble's single version folder (object stores have no empty folders, so it holds a marker)."""
    return {f"{model_names(spec.name).ensemble}/{ENSEMBLE_VERSION}/ENSEMBLE": b"runs the latest version of each step\n"}
