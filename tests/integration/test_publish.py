"""Publication into a model repository served by a real tritonserver: two versions, tensor-in and text-in
inference over HTTP and gRPC equal to PyTorch, the predict client, and failures that leave the repository as
it was."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finetune_operator import predict as predict_cli
from finetune_trainer import triton_repo
from finetune_trainer.publish import PublishError, main, publish
from tests.fixtures.triton import snapshot


def served_versions(config: Path) -> list[int]:
    """The versions a config.pbtxt serves, read as Triton reads it."""
    return triton_repo.served_versions(triton_repo.parse_config(config.read_text()))


pytestmark = pytest.mark.slow  # a real Triton loading Python-backend models (about 40 s for the module)

NAME = "sentiment"
TEXTS = [
    "the movie was wonderful and the acting superb",
    "a boring plot and terrible acting",
    "excellent",
    "it was a really dreadful film",
    "quite a delightful story and a fantastic film",
]
CLIENTS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module")
def expected(finetuned_tiny: Path) -> dict[str, np.ndarray]:
    model = AutoModelForSequenceClassification.from_pretrained(finetuned_tiny).eval()
    tokenizer = AutoTokenizer.from_pretrained(finetuned_tiny)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**enc).logits
    labels = [model.config.id2label[i] for i in logits.argmax(1).tolist()]
    return {
        "logits": logits.numpy(),
        "probabilities": logits.softmax(1).numpy(),
        "labels": np.array(labels),
        **{k: v.numpy() for k, v in enc.items()},
    }


@pytest.fixture(scope="module")
def served(tiny_export: Path, start_triton, tmp_path_factory):
    """A repository with versions 1 (API, HTTP) and 2 (CLI, gRPC) of the tiny model, served by tritonserver."""
    repo = tmp_path_factory.mktemp("model-repository")
    server = start_triton(repo)
    first = publish(tiny_export, repo.as_uri(), NAME, triton_url=f"http://{server.http_url}", backend="python")
    argv = ["--export", str(tiny_export), "--repository", repo.as_uri(), "--name", NAME, "--backend", "python"]
    assert main([*argv, "--triton-url", f"grpc://{server.grpc_url}"]) == 0
    return server, repo, first


def client(server, protocol: str):
    return CLIENTS[protocol].InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)


def metadata(c, model: str, version: str = "") -> dict:
    meta = c.get_model_metadata(model, version)
    if isinstance(meta, dict):
        return meta
    return {"versions": list(meta.versions), "inputs": [{"name": i.name, "datatype": i.datatype} for i in meta.inputs]}


def infer(c, module, model: str, version: str, inputs: dict[str, np.ndarray], outputs: list[str]):
    tensors = []
    for name, array in inputs.items():
        t = module.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "INT64")
        t.set_data_from_numpy(array)
        tensors.append(t)
    result = c.infer(model, tensors, model_version=version, outputs=[module.InferRequestedOutput(o) for o in outputs])
    return {o: result.as_numpy(o) for o in outputs}


def test_first_publish_reports_what_triton_confirmed(served):
    _, repo, first = served
    assert (first.version, first.served_versions, first.ready) == (1, [1], True)
    assert first.models["ensemble"] == f"{NAME}_text"
    assert first.metadata[NAME]["inputs"][0]["name"] == "input_ids"
    assert (repo / NAME / "1" / "model.onnx").is_file() and (repo / NAME / "2" / "model.onnx").is_file()
    assert served_versions(repo / NAME / "config.pbtxt") == [1, 2]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("version", ["1", "2"])
def test_each_version_is_ready_and_predicts_like_pytorch(served, expected, protocol, version):
    server, _, _ = served
    c = client(server, protocol)
    assert c.is_model_ready(NAME, version)
    assert list(metadata(c, NAME)["versions"]) == ["1", "2"]
    meta = metadata(c, NAME, version)
    assert list(meta["versions"]) == [version]
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("input_ids", "INT64"),
        ("attention_mask", "INT64"),
        ("token_type_ids", "INT64"),
    ]
    tokens = {k: expected[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    logits = infer(c, CLIENTS[protocol], NAME, version, tokens, ["logits"])["logits"]
    np.testing.assert_allclose(logits, expected["logits"], atol=1e-4)
    assert (logits.argmax(1) == expected["logits"].argmax(1)).all()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_text_in_ensemble(served, expected, protocol):
    server, _, _ = served
    c = client(server, protocol)
    text = np.array([[t.encode()] for t in TEXTS], dtype=object)
    out = infer(c, CLIENTS[protocol], f"{NAME}_text", "", {"TEXT": text}, ["LABEL", "PROBABILITIES"])
    assert [x.decode() for x in out["LABEL"].reshape(-1)] == list(expected["labels"])
    np.testing.assert_allclose(out["PROBABILITIES"], expected["probabilities"], atol=1e-4)
    assert {"negative", "positive"} <= set(expected["labels"])  # a non-trivial model


@pytest.mark.parametrize(("grpc", "version"), [(False, None), (True, 1)])
def test_predict_command_prints_labels(served, expected, capsys, grpc, version):
    server, _, _ = served
    parser = argparse.ArgumentParser()
    predict_cli.add_arguments(parser)
    url = server.grpc_url if grpc else f"http://{server.http_url}"
    argv = [
        "--url",
        url,
        "--model",
        NAME,
        *(["--grpc"] if grpc else []),
        *(["--version", str(version)] if version else []),
    ]
    assert predict_cli.run(parser.parse_args([*argv, *TEXTS])) == 0
    lines = capsys.readouterr().out.splitlines()
    # label, confidence, every probability, text
    assert [line.split("\t")[0] for line in lines] == list(expected["labels"])
    assert [line.split("\t")[3] for line in lines] == TEXTS
    first = dict(kv.split("=") for kv in lines[0].split("\t")[2].split())
    assert float(first["positive"]) == pytest.approx(float(expected["probabilities"][0][1]), abs=1e-3)
    assert float(lines[0].split("\t")[1]) == pytest.approx(float(expected["probabilities"][0].max()), abs=1e-3)


def test_predict_reports_an_unknown_model(served, capsys):
    server, _, _ = served
    parser = argparse.ArgumentParser()
    predict_cli.add_arguments(parser)
    assert predict_cli.run(parser.parse_args(["--url", server.http_url, "--model", "nope", "hello"])) == 1
    assert "could not run nope" in capsys.readouterr().err


def test_existing_version_is_never_overwritten(served, tiny_export):
    server, repo, _ = served
    before = snapshot(repo)
    with pytest.raises(PublishError, match="version 2 of sentiment already exists"):
        publish(tiny_export, repo.as_uri(), NAME, version=2, triton_url=f"http://{server.http_url}", backend="python")
    assert snapshot(repo) == before


def test_triton_down_writes_nothing(served, tiny_export):
    from tests.fixtures.triton import free_port

    _, repo, _ = served
    before = snapshot(repo)
    with pytest.raises(PublishError, match=r"not reachable.*nothing was written"):
        publish(tiny_export, repo.as_uri(), NAME, triton_url=f"http://127.0.0.1:{free_port()}", backend="python")
    assert snapshot(repo) == before


def test_unreachable_repository_writes_nothing(tiny_export, s3_server, monkeypatch, capsys):
    for key, value in {**s3_server.env(), "FINETUNE_S3_RETRY_DEADLINE_S": "1"}.items():
        monkeypatch.setenv(key, value)
    url = s3_server.url("models")
    first = publish(tiny_export, url, NAME)  # no Triton: the repository alone
    assert first.version == 1
    keys = lambda: sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket)["Contents"])  # noqa: E731
    before = keys()
    assert f"models/{NAME}/1/model.onnx" in before and f"models/{NAME}_text/config.pbtxt" in before
    s3_server.stop()
    try:
        argv = ["--export", str(tiny_export), "--repository", url, "--name", NAME]
        assert main(argv) == 1
        assert f"model repository {url} is not reachable" in capsys.readouterr().err
    finally:
        s3_server.start()
    assert keys() == before


def test_missing_repository_folder(tiny_export, tmp_path):
    missing = tmp_path / "no-such-repository"
    with pytest.raises(PublishError, match="no such folder"):
        publish(tiny_export, missing.as_uri(), NAME)
    assert not missing.exists()


def test_failed_load_rolls_back(served, tiny_export):
    """The onnxruntime backend does not exist in this Triton: the load fails after the configs named version 3.
    The configs are restored; version 3's files stay, unlisted (a Triton may have started loading them)."""
    server, repo, _ = served
    before = snapshot(repo)
    with pytest.raises(PublishError, match=r"(?s)version 3 .* failed: .*previous configs were restored; version 3 "
                                           r"stays unlisted"):  # fmt: skip
        publish(tiny_export, repo.as_uri(), NAME, triton_url=f"http://{server.http_url}", backend="onnxruntime")
    after = snapshot(repo)
    assert {k: v for k, v in after.items() if k in before} == before, "every earlier file as it was"
    added = sorted(set(after) - set(before))
    assert f"{NAME}/.claims/3.json" in added and f"{NAME}/3/model.onnx" in added
    assert all(k.split("/")[1] in ("3", ".claims") for k in added), added
    assert served_versions(repo / NAME / "config.pbtxt") == [1, 2]
    c = client(server, "http")
    assert c.is_model_ready(NAME, "1") and c.is_model_ready(NAME, "2") and c.is_model_ready(f"{NAME}_text")


def test_a_retried_publication_under_the_same_key_confirms_its_version(served, tiny_export, expected):
    """What a retried export pod does: the job's uid as idempotency key, so one job makes one version."""
    server, repo, _ = served
    url = f"http://{server.http_url}"
    first = publish(tiny_export, repo.as_uri(), NAME, triton_url=url, backend="python", key="job-uid-1")
    v = first.version
    assert v > 2 and (first.reused, first.ready) == (False, True)
    before = snapshot(repo)
    again = publish(tiny_export, repo.as_uri(), NAME, triton_url=url, backend="python", key="job-uid-1")
    assert (again.version, again.reused, again.ready, again.served_versions) == (v, True, True, [1, 2, v])
    assert snapshot(repo) == before, "a reused version writes nothing"
    c = client(server, "http")
    tokens = {k: expected[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    logits = infer(c, httpclient, NAME, str(v), tokens, ["logits"])["logits"]
    np.testing.assert_allclose(logits, expected["logits"], atol=1e-4)
