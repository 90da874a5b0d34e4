"""S3Storage against a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from finetune_trainer.storage import NotFoundError, StorageError, open_storage
from finetune_trainer.storage_s3 import S3Config, S3Storage
from tests.fixtures.s3 import S3Server, free_ports

MiB = 1024 * 1024


def test_round_trip_bytes_and_files(s3_server: S3Server, tmp_path: Path) -> None:
    store = open_storage(s3_server.url("jobs/a"), config=s3_server.config())
    store.put_bytes("config.json", b'{"x": 1}')
    assert store.get_bytes("config.json") == b'{"x": 1}'
    src = tmp_path / "small.bin"
    src.write_bytes(os.urandom(1000))
    store.put_file(src, "model/small.bin")
    store.get_file("model/small.bin", tmp_path / "back" / "small.bin")
    assert (tmp_path / "back" / "small.bin").read_bytes() == src.read_bytes()
    assert store.list() == ["config.json", "model/small.bin"]
    assert store.exists("config.json") and not store.exists("nope")
    with pytest.raises(NotFoundError, match="nope"):
        store.get_bytes("nope")
    keys = s3_server.client().list_objects_v2(Bucket=s3_server.bucket)["Contents"]
    assert sorted(k["Key"] for k in keys) == ["jobs/a/config.json", "jobs/a/model/small.bin"], (
        "keys live under the prefix"
    )


def test_multipart_upload_above_threshold(s3_server: S3Server, tmp_path: Path) -> None:
    config = s3_server.config(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    store = open_storage(s3_server.url("big"), config=config)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * MiB + 123))
    store.put_file(src, "weights.bin")
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key="big/weights.bin")
    assert head["ContentLength"] == src.stat().st_size
    assert head["ETag"].strip('"').endswith("-3"), "uploaded in 3 parts"
    store.get_file("weights.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


def test_listing_pages_through_all_keys(s3_server: S3Server) -> None:
    store = open_storage(s3_server.url("many"), config=s3_server.config(page_size=7))
    keys = [f"d{i % 3}/k{i:03d}" for i in range(40)]
    for key in keys:
        store.put_bytes(key, b"")
    assert store.list() == sorted(keys)
    assert store.list("d1/") == sorted(k for k in keys if k.startswith("d1/"))
    store.delete(keys[:25])
    assert store.list() == sorted(keys[25:])


def test_put_if_absent(s3_server: S3Server) -> None:
    store = open_storage(s3_server.url("models"), config=s3_server.config())
    assert store.put_if_absent("m/1/model.onnx", b"first") is True
    assert store.put_if_absent("m/1/model.onnx", b"second") is False
    assert store.get_bytes("m/1/model.onnx") == b"first"
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(store.put_if_absent("m/2/x", str(i).encode())))
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]


def test_wrong_secret_is_one_clear_error_without_the_secret(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-" + s3_server.secret_key
    caplog.set_level(logging.DEBUG, logger="finetune_trainer")
    start = time.monotonic()
    with pytest.raises(StorageError, match="access denied") as err:
        open_storage(s3_server.url("x"), config=s3_server.config(secret_key=wrong))
    assert time.monotonic() - start < 5, "auth errors fail fast, without retries"
    message = str(err.value)
    assert s3_server.bucket in message and "AWS_SECRET_ACCESS_KEY" in message
    for secret in (wrong, s3_server.secret_key, s3_server.access_key):
        assert secret not in message and secret not in caplog.text
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_unknown_access_key_is_access_denied(s3_server: S3Server) -> None:
    store = S3Storage(s3_server.bucket, "x", s3_server.config(access_key="nobody"))
    with pytest.raises(StorageError, match="access denied"):
        store.put_bytes("k", b"")


def test_missing_bucket_is_one_clear_error(s3_server: S3Server) -> None:
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        open_storage("s3://no-such-bucket/prefix", config=s3_server.config())


def test_unreachable_endpoint_gives_up_within_the_deadline(caplog: pytest.LogCaptureFixture) -> None:
    (port,) = free_ports(1)[:1]
    config = S3Config(
        endpoint_url=f"http://127.0.0.1:{port}", access_key="a", secret_key="s-" + "x" * 20, retry_deadline_s=1.5
    )
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"cannot reach endpoint http://127\.0\.0\.1") as err:
        open_storage("s3://bucket/p", config=config)
    assert time.monotonic() - start < 15
    assert "FINETUNE_S3_ENDPOINT_URL" in str(err.value) and "s-xxxx" not in str(err.value)


def test_credentials_from_a_mounted_secret_directory(s3_server: S3Server, tmp_path: Path) -> None:
    (tmp_path / "accessKey").write_text(s3_server.access_key + "\n")
    (tmp_path / "secretKey").write_text(s3_server.secret_key + "\n")
    env = {"FINETUNE_S3_ENDPOINT_URL": s3_server.endpoint, "FINETUNE_S3_SECRET_DIR": str(tmp_path)}
    store = open_storage(s3_server.url("p"), config=S3Config.from_env(env))
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"


@pytest.mark.slow
def test_write_rides_out_a_server_restart(s3_server: S3Server) -> None:
    store = open_storage(s3_server.url("p"), config=s3_server.config(max_attempts=2, retry_deadline_s=60))
    s3_server.stop(crash=True)
    with ThreadPoolExecutor(1) as pool:
        write = pool.submit(store.put_bytes, "after-outage", b"ok")
        time.sleep(3.0)
        assert not write.done(), "the write waits for the server"
        s3_server.start()
        write.result(timeout=60)
    assert store.retries > 0, "the write was retried by our loop"
    assert store.get_bytes("after-outage") == b"ok"
