"""Triton repository layout: every rendered config.pbtxt parses as Triton's ModelConfig and says what we mean."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from finetune_trainer import triton_repo as tr


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


VARIANTS = list(
    itertools.product(
        tr.BACKENDS,
        [tr.TOKEN_INPUTS, ("input_ids", "attention_mask")],
        tr.TASKS,
        [(), (1,), (2, 3, 7)],
        [False, True],
        ["KIND_CPU", "KIND_GPU"],
    )
)


@pytest.mark.parametrize(("backend", "inputs", "task", "versions", "pair", "kind"), VARIANTS)
def test_every_config_parses_as_model_config(backend, inputs, task, versions, pair, kind):
    labels = ("score",) if task == "regression" else ("negative", "neutral", "positive")
    spec = tr.ServingSpec("sentiment", labels, task, inputs, pair, versions=versions, instance_kind=kind)
    files = tr.model_files(spec, backend)
    configs = {key.split("/")[0]: parse(data.decode()) for key, data in files.items() if key.endswith(".pbtxt")}
    names = tr.model_names("sentiment")
    assert set(configs) == set(names.all())
    for name, config in configs.items():
        assert config.name == name
        assert config.max_batch_size == 32
    for name in (names.classifier, names.tokenizer, names.postprocess):
        policy = configs[name].version_policy
        if versions:
            assert list(policy.specific.versions) == sorted(versions)
        else:
            assert policy.latest.num_versions == 1
    classifier = configs[names.classifier]
    assert [i.name for i in classifier.input] == list(inputs)
    assert all(i.data_type == mc.TYPE_INT64 and list(i.dims) == [-1] for i in classifier.input)
    (logits,) = classifier.output
    assert (logits.name, list(logits.dims), logits.label_filename) == ("logits", [len(labels)], "labels.txt")
    assert [o.name for o in configs[names.tokenizer].output] == list(inputs)
    assert [i.name for i in configs[names.ensemble].input] == (["TEXT", "TEXT_PAIR"] if pair else ["TEXT"])
    assert f"{names.classifier}/labels.txt" in files


@pytest.mark.parametrize(
    ("backend", "platform", "kind", "filename"),
    [
        ("onnxruntime", "onnxruntime_onnx", mc.ModelInstanceGroup.KIND_CPU, "model.onnx"),
        ("tensorrt", "tensorrt_plan", mc.ModelInstanceGroup.KIND_GPU, "model.plan"),
        ("python", "", mc.ModelInstanceGroup.KIND_CPU, ""),
    ],
)
def test_classifier_backends(backend, platform, kind, filename):
    spec = tr.ServingSpec("m", ("a", "b"), instance_count=2, max_batch_size=16, max_queue_delay_us=500)
    config = parse(tr.classifier_config(spec, backend))
    assert config.platform == platform
    assert config.backend == {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "python": "python"}[backend]
    assert config.default_model_filename == filename
    assert [(g.kind, g.count) for g in config.instance_group] == [(kind, 2)]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]  # 32 exceeds max_batch_size
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    if backend == "python":
        assert config.parameters["onnx_file"].string_value == "model.onnx"


def test_ensemble_wires_tokenizer_classifier_postprocess():
    spec = tr.ServingSpec("m", ("a", "b"), inputs=("input_ids", "attention_mask"), text_pair=True)
    config = parse(tr.ensemble_config(spec))
    assert config.platform == "ensemble"
    steps = config.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["m_tokenizer", "m", "m_postprocess"]
    assert all(s.model_version == -1 for s in steps)
    assert dict(steps[0].input_map) == {"TEXT": "TEXT", "TEXT_PAIR": "TEXT_PAIR"}
    assert (
        dict(steps[0].output_map)
        == dict(steps[1].input_map)
        == {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    )
    assert dict(steps[2].output_map) == {"LABEL": "LABEL", "PROBABILITIES": "PROBABILITIES"}
    assert [o.name for o in config.output] == ["LABEL", "PROBABILITIES"]
    assert config.output[0].data_type == mc.TYPE_STRING
    assert config.parameters["labels"].string_value == '["a", "b"]'


def test_postprocess_and_tokenizer_parameters():
    spec = tr.ServingSpec("m", ('say "hi"', "b"), task="multi_label_classification", max_sequence_length=64)
    post = parse(tr.postprocess_config(spec))
    assert post.parameters["task"].string_value == "multi_label_classification"
    assert post.parameters["labels"].string_value == '["say \\"hi\\"", "b"]'
    tok = parse(tr.tokenizer_config(spec))
    assert tok.parameters["max_sequence_length"].string_value == "64"
    assert tok.input[0].data_type == mc.TYPE_STRING


def test_only_the_classifier_waits_to_fill_a_batch():
    """A queue delay on the cheap tokenizer and postprocess would add to every text-in request's latency."""
    spec = tr.ServingSpec("m", ("a", "b"), max_queue_delay_us=750, max_batch_size=16)
    classifier = parse(tr.classifier_config(spec)).dynamic_batching
    assert classifier.max_queue_delay_microseconds == 750 and list(classifier.preferred_batch_size) == [4, 8, 16]
    for config in (tr.tokenizer_config(spec), tr.postprocess_config(spec)):
        batching = parse(config).dynamic_batching
        assert parse(config).HasField("dynamic_batching")
        assert batching.max_queue_delay_microseconds == 0 and not batching.preferred_batch_size


def test_version_files(tmp_path: Path):
    for f in ("model.onnx", "model.int8.onnx", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / f).write_bytes(b"x")
    spec = tr.ServingSpec("m", ("a", "b"))
    files = tr.version_files(spec, 3, tmp_path, "python", "model.int8.onnx")
    assert files["m/3/model.onnx"] == tmp_path / "model.int8.onnx"
    assert b"onnxruntime" in files["m/3/model.py"]
    assert files["m_tokenizer/3/tokenizer.json"] == tmp_path / "tokenizer.json"
    assert b"TritonPythonModel" in files["m_tokenizer/3/model.py"]
    assert b"TritonPythonModel" in files["m_postprocess/3/model.py"]
    assert "m/3/model.py" not in tr.version_files(spec, 3, tmp_path, "onnxruntime")
    assert "m/3/model.plan" in tr.version_files(spec, 3, tmp_path, "tensorrt")
    assert list(tr.ensemble_version_files(spec)) == ["m_text/1/ENSEMBLE"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bad name"}, "model name"),
        ({"labels": ()}, "labels"),
        ({"task": "ranking"}, "task"),
        ({"instance_kind": "KIND_TPU"}, "instance_kind"),
        ({"inputs": ("input_ids",)}, "inputs"),
        ({"versions": (0,)}, "versions"),
    ],
)
def test_bad_spec_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tr.ServingSpec(**({"name": "m", "labels": ("a",)} | kwargs))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend 'tensorflow'"):
        tr.classifier_config(tr.ServingSpec("m", ("a",)), "tensorflow")
