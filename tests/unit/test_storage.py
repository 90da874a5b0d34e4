"""Local storage semantics, URL parsing and S3 configuration: no server needed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from finetune_trainer.storage import LocalStorage, NotFoundError, StorageError, open_storage
from finetune_trainer.storage_s3 import S3Config, S3Storage

SECRET = "very-secret-value-123"


def test_local_round_trip(tmp_path: Path) -> None:
    store = open_storage(str(tmp_path / "base"))
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 100_000)
    store.put_file(src, "run/model/weights.bin")
    store.put_bytes("run/config.json", b"{}")
    assert store.list() == ["run/config.json", "run/model/weights.bin"]
    assert store.list("run/model") == ["run/model/weights.bin"]
    assert store.list("nothing/") == []
    out = tmp_path / "out" / "w.bin"
    store.get_file("run/model/weights.bin", out)
    assert out.read_bytes() == src.read_bytes()
    assert store.get_bytes("run/config.json") == b"{}"
    assert store.exists("run/config.json") and not store.exists("run/missing")
    store.delete(["run/model/weights.bin", "run/never-existed"])
    assert store.list() == ["run/config.json"]
    assert not (tmp_path / "base" / "run" / "model").exists(), "an emptied directory is removed"


def test_file_url_and_plain_path_open_the_same_directory(tmp_path: Path) -> None:
    a = open_storage(tmp_path.as_uri())
    b = open_storage(str(tmp_path))
    a.put_bytes("k", b"1")
    assert isinstance(b, LocalStorage) and b.get_bytes("k") == b"1"
    assert a.url == b.url == tmp_path.as_uri()


def test_local_writes_are_atomic_and_leave_no_temp_files(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.put_bytes("a/b", b"old")
    with pytest.raises(StorageError, match="a/b"):
        store.put_file(tmp_path / "does-not-exist", "a/b")
    assert store.get_bytes("a/b") == b"old", "a failed write leaves the previous object intact"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b"]


def test_put_if_absent_never_overwrites(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    assert store.put_if_absent("models/m/1/model.onnx", b"first") is True
    assert store.put_if_absent("models/m/1/model.onnx", b"second") is False
    assert store.get_bytes("models/m/1/model.onnx") == b"first"


def test_put_if_absent_race_has_one_winner(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(store.put_if_absent("v/1", str(i).encode())))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


def test_missing_key_is_not_found(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    with pytest.raises(NotFoundError, match="nope"):
        store.get_bytes("nope")
    with pytest.raises(NotFoundError, match="nope"):
        store.get_file("nope", tmp_path / "x")


@pytest.mark.parametrize("key", ["", "/abs", "../escape", "a/../b", "a//b", "a/.tmp-x"])
def test_invalid_keys_are_rejected(tmp_path: Path, key: str) -> None:
    with pytest.raises(StorageError, match="invalid key"):
        LocalStorage(tmp_path).put_bytes(key, b"")


def test_path_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(StorageError, match="not a directory"):
        open_storage(str(tmp_path / "f"))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://bucket/x", "unsupported storage URL scheme"),
        ("s3:///prefix", "missing bucket"),
        (f"s3://AKIA:{SECRET}@bucket/x", "credentials in the storage URL"),
        ("file://host/path", "must be absolute"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message) as err:
        open_storage(url, config=S3Config())
    assert SECRET not in str(err.value)


def test_config_from_environment() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "AKIA1",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://aws-endpoint:1",
        "FINETUNE_S3_ENDPOINT_URL": "http://ours:9000",
        "FINETUNE_S3_MULTIPART_CHUNKSIZE_MB": "32",
        "FINETUNE_S3_RETRY_DEADLINE_S": "7.5",
    }
    cfg = S3Config.from_env(env)
    assert (cfg.access_key, cfg.secret_key, cfg.region) == ("AKIA1", SECRET, "eu-west-1")
    assert cfg.endpoint_url == "http://ours:9000", "FINETUNE_S3_ENDPOINT_URL wins over AWS_ENDPOINT_URL"
    assert cfg.addressing_style == "path", "a custom endpoint defaults to path-style addressing"
    assert cfg.multipart_chunksize == 32 * 1024 * 1024 and cfg.retry_deadline_s == 7.5
    assert S3Config.from_env({}).addressing_style == "auto"


def test_secret_directory_wins_over_variables(tmp_path: Path) -> None:
    (tmp_path / "accessKey").write_text("from-secret\n")
    (tmp_path / "secretKey").write_text(SECRET + "\n")
    env = {"AWS_ACCESS_KEY_ID": "from-env", "AWS_SECRET_ACCESS_KEY": "env", "FINETUNE_S3_SECRET_DIR": str(tmp_path)}
    cfg = S3Config.from_env(env)
    assert (cfg.access_key, cfg.secret_key, cfg.session_token) == ("from-secret", SECRET, None)


def test_secret_directory_without_secret_key_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "accessKey").write_text("a")
    with pytest.raises(StorageError, match="secretKey"):
        S3Config.from_env({"FINETUNE_S3_SECRET_DIR": str(tmp_path)})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FINETUNE_S3_ADDRESSING_STYLE": "dns"}, "FINETUNE_S3_ADDRESSING_STYLE"),
        ({"FINETUNE_S3_MULTIPART_THRESHOLD_MB": "lots"}, "FINETUNE_S3_MULTIPART_THRESHOLD_MB"),
        ({"FINETUNE_S3_MULTIPART_CHUNKSIZE_MB": "1"}, "at least 5 MiB"),
    ],
)
def test_bad_config_values_name_the_variable(env: dict, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        S3Config.from_env(env)


def test_secrets_stay_out_of_reprs() -> None:
    cfg = S3Config(
        endpoint_url="http://127.0.0.1:1", access_key="AKIA1", secret_key=SECRET, session_token="tok-" + SECRET
    )
    store = S3Storage("bucket", "pre/fix", cfg)
    for text in (repr(cfg), str(cfg), repr(store), store.url):
        assert SECRET not in text and "AKIA1" not in text
    assert store.url == "s3://bucket/pre/fix"
