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
      <N>/model.py
    NAME_text/                ensemble: TEXT -> tokenizer -> classifier -> postprocess -> LABEL, PROBABILITIES
      config.pbtxt
      1/                      an ensemble has one version; it runs the latest version of each step

The classifier, tokenizer and postprocess models are versioned in lockstep (version N of each comes from the
same export), so the ensemble always serves a consistent latest set, and a client that wants version N calls
the three models at version N itself (see ``finetune predict --version``).

Every config.pbtxt rendered here parses as Triton's ``ModelConfig`` protobuf (tests check each variant).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

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


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid protobuf text-format string


def _tensor(name: str, data_type: str, dims: Sequence[int], extra: str = "") -> str:
    dims_text = ", ".join(str(d) for d in dims)
    return f"  {{\n    name: {_q(name)}\n    data_type: {data_type}\n    dims: [ {dims_text} ]{extra}\n  }}"


def _tensors(key: str, items: Sequence[str]) -> str:
    return f"{key} [\n" + ",\n".join(items) + "\n]"


def _parameters(params: dict[str, str]) -> str:
    return "\n".join(
        f"parameters {{\n  key: {_q(k)}\n  value: {{ string_value: {_q(str(v))} }}\n}}" for k, v in params.items()
    )


def version_policy(versions: Sequence[int]) -> str:
    """``specific`` for the listed versions; ``latest { num_versions: 1 }`` when none are listed."""
    if not versions:
        return "version_policy: { latest: { num_versions: 1 } }"
    listed = ", ".join(str(v) for v in sorted(set(versions)))
    return f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}"


def _dynamic_batching(spec: ServingSpec, wait: bool = True) -> str:
    """The classifier may wait ``max_queue_delay_us`` to fill a preferred batch; the cheap tokenizer and
    postprocess batch only what is already queued: a wait there would delay every text-in request."""
    if not wait:
        return "dynamic_batching {\n  max_queue_delay_microseconds: 0\n}"
    sizes = ", ".join(str(s) for s in spec.preferred_batch_sizes if s <= spec.max_batch_size)
    preferred = f"\n  preferred_batch_size: [ {sizes} ]" if sizes else ""
    return f"dynamic_batching {{{preferred}\n  max_queue_delay_microseconds: {spec.max_queue_delay_us}\n}}"


def _instances(spec: ServingSpec, kind: str | None = None) -> str:
    return f"instance_group [\n  {{\n    count: {spec.instance_count}\n    kind: {kind or spec.instance_kind}\n  }}\n]"


def _token_tensors(spec: ServingSpec) -> list[str]:
    return [_tensor(name, "TYPE_INT64", [-1]) for name in spec.inputs]


def _header(name: str, kind: str, max_batch_size: int) -> str:
    return f"name: {_q(name)}\n{kind}\nmax_batch_size: {max_batch_size}"


# ---------------------------------------------------------------------------------------------- configs


def classifier_config(spec: ServingSpec, backend: str = "onnxruntime") -> str:
    """config.pbtxt of the classifier: ``onnxruntime`` (production ONNX), ``tensorrt`` (model.plan) or
    ``python`` (the same model.onnx through onnxruntime inside Triton's Python backend)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    kind = {
        "onnxruntime": 'platform: "onnxruntime_onnx"\nbackend: "onnxruntime"',
        "tensorrt": 'platform: "tensorrt_plan"\nbackend: "tensorrt"',
        "python": 'backend: "python"',
    }[backend]
    parts = [
        _header(spec.name, kind, spec.max_batch_size),
        version_policy(spec.versions),
        _tensors("input", _token_tensors(spec)),
        _tensors("output", [_tensor("logits", "TYPE_FP32", [spec.num_labels], '\n    label_filename: "labels.txt"')]),
        _dynamic_batching(spec),
        _instances(spec, "KIND_GPU" if backend == "tensorrt" else None),
    ]
    if backend == "tensorrt":
        parts.append('default_model_filename: "model.plan"')
    elif backend == "onnxruntime":
        parts.append('default_model_filename: "model.onnx"')
    if backend == "python":
        parts.append(_parameters({"onnx_file": "model.onnx", "intra_op_thread_count": str(spec.intra_op_threads)}))
    return "\n".join(p for p in parts if p) + "\n"


def tokenizer_config(spec: ServingSpec) -> str:
    """config.pbtxt of the python-backend tokenizer: TEXT (and TEXT_PAIR) strings -> token id tensors."""
    names = model_names(spec.name)
    inputs = [_tensor("TEXT", "TYPE_STRING", [1])]
    if spec.text_pair:
        inputs.append(_tensor("TEXT_PAIR", "TYPE_STRING", [1]))
    params = {
        "max_sequence_length": str(spec.max_sequence_length),
        "pad_token": spec.pad_token,
        "pad_token_id": str(spec.pad_token_id),
        "padding_side": spec.padding_side,
        "pad_to_multiple_of": str(spec.pad_to_multiple_of),
    }
    return (
        "\n".join(
            [
                _header(names.tokenizer, 'backend: "python"', spec.max_batch_size),
                version_policy(spec.versions),
                _tensors("input", inputs),
                _tensors("output", _token_tensors(spec)),
                _dynamic_batching(spec, wait=False),
                _instances(spec, "KIND_CPU"),
                _parameters(params),
            ]
        )
        + "\n"
    )


def postprocess_config(spec: ServingSpec) -> str:
    """config.pbtxt of the python-backend postprocess: logits -> LABEL and PROBABILITIES (softmax/sigmoid)."""
    names = model_names(spec.name)
    params = {"labels": json.dumps(list(spec.labels)), "task": spec.task, "threshold": str(spec.threshold)}
    return (
        "\n".join(
            [
                _header(names.postprocess, 'backend: "python"', spec.max_batch_size),
                version_policy(spec.versions),
                _tensors("input", [_tensor("logits", "TYPE_FP32", [spec.num_labels])]),
                _tensors(
                    "output",
                    [
                        _tensor("LABEL", "TYPE_STRING", [1]),
                        _tensor("PROBABILITIES", "TYPE_FP32", [spec.num_labels], '\n    label_filename: "labels.txt"'),
                    ],
                ),
                _dynamic_batching(spec, wait=False),
                _instances(spec, "KIND_CPU"),
                _parameters(params),
            ]
        )
        + "\n"
    )


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    lines = [f"    {{\n      model_name: {_q(model)}\n      model_version: -1"]
    lines += [f"      input_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in inputs.items()]
    lines += [f"      output_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in outputs.items()]
    return "\n".join(lines) + "\n    }"


def ensemble_config(spec: ServingSpec) -> str:
    """config.pbtxt of the text-in ensemble: TEXT -> tokenizer -> classifier -> postprocess."""
    names = model_names(spec.name)
    text_inputs = {"TEXT": "TEXT"} | ({"TEXT_PAIR": "TEXT_PAIR"} if spec.text_pair else {})
    tokens = {name: name for name in spec.inputs}
    steps = [
        _step(names.tokenizer, text_inputs, tokens),
        _step(names.classifier, tokens, {"logits": "logits"}),
        _step(names.postprocess, {"logits": "logits"}, {"LABEL": "LABEL", "PROBABILITIES": "PROBABILITIES"}),
    ]
    inputs = [_tensor(k, "TYPE_STRING", [1]) for k in text_inputs]
    outputs = [
        _tensor("LABEL", "TYPE_STRING", [1]),
        _tensor("PROBABILITIES", "TYPE_FP32", [spec.num_labels], '\n    label_filename: "labels.txt"'),
    ]
    return (
        "\n".join(
            [
                _header(names.ensemble, 'platform: "ensemble"', spec.max_batch_size),
                "version_policy: { latest: { num_versions: 1 } }",
                _tensors("input", inputs),
                _tensors("output", outputs),
                "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}",
                _parameters({"labels": json.dumps(list(spec.labels))}),
            ]
        )
        + "\n"
    )


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
    return files


def ensemble_version_files(spec: ServingSpec) -> dict[str, bytes]:
    """The ensemble's single version folder (object stores have no empty folders, so it holds a marker)."""
    return {f"{model_names(spec.name).ensemble}/{ENSEMBLE_VERSION}/ENSEMBLE": b"runs the latest version of each step\n"}
