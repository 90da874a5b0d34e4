"""CheckpointManager on real storage: a local directory and S3 (SeaweedFS on loopback)."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune_trainer.checkpoint import CheckpointManager, SaveStats
from finetune_trainer.storage import LocalStorage, Storage, StorageError, open_storage
from finetune_trainer.storage_s3 import S3Storage
from tests.fixtures.s3 import S3Server

MiB = 1024 * 1024


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return LocalStorage(tmp_path / "checkpoints")
    s3: S3Server = request.getfixturevalue("s3_server")
    return open_storage(s3.url("job/checkpoints"), config=s3.config())


def manager(storage: Storage, tmp_path: Path, **kw) -> CheckpointManager:
    return CheckpointManager(storage.url, storage=storage, staging_dir=tmp_path / "staging", **kw)


def train_state(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        loss = model(torch.randn(8, 16)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "trainer": {"step": 2, "epoch": 0}}
    return model, opt, state


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def steps(storage: Storage) -> list[int]:
    return sorted({int(k.split("/")[0].removeprefix("checkpoint-")) for k in storage.list("checkpoint-")})


def test_save_then_resume_round_trip(storage: Storage, tmp_path: Path) -> None:
    model, opt, state = train_state()
    seen: list[SaveStats] = []
    with manager(storage, tmp_path, on_saved=seen.append) as ckpt:
        assert ckpt.latest() is None
        ckpt.save(2, state, rank_state=rng_state(), metric=0.5)
        expected_rng = torch.get_rng_state()
        ckpt.wait()
    assert len(seen) == 1 and seen[0].committed and seen[0].bytes > 0
    assert seen[0].upload_seconds >= seen[0].transfer_seconds > 0

    with manager(storage, tmp_path) as ckpt:
        info = ckpt.latest()
        assert info is not None and (info.step, info.key, info.metric) == (2, "checkpoint-00000002", 0.5)
        loaded, rank_state = ckpt.load(info)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded["model"][name], tensor)
    assert loaded["optimizer"]["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    assert loaded["trainer"] == {"step": 2, "epoch": 0}
    assert rank_state is not None and torch.equal(rank_state["torch"], expected_rng)
    assert isinstance(rank_state["numpy"][1], np.ndarray)


def test_save_snapshots_state_before_training_goes_on(storage: Storage, tmp_path: Path) -> None:
    model, _, state = train_state()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with manager(storage, tmp_path) as ckpt:
        ckpt.save(1, state)
        with torch.no_grad():  # the training loop keeps updating weights in place during the upload
            for p in model.parameters():
                p.add_(1.0)
        ckpt.wait()
        loaded, rank_state = ckpt.load(ckpt.latest())
    assert rank_state is None
    for name, tensor in before.items():
        assert torch.equal(loaded["model"][name], tensor)


def test_snapshots_reuse_buffers_from_the_previous_save(tmp_path: Path) -> None:
    from finetune_trainer.snapshot import SnapshotBuffers

    _, _, state = train_state()
    buffers = SnapshotBuffers()
    lent: list = []
    first = buffers.snapshot(state, lent)  # kept alive: fresh allocations could not reuse its addresses
    pointers = sorted(buf.data_ptr() for _, buf in lent)
    buffers.release(lent)
    second = buffers.snapshot(state, lent)
    assert sorted(buf.data_ptr() for _, buf in lent) == pointers, "no new allocation on the second save"
    assert first is not second
    for name, tensor in state["model"].items():
        assert torch.equal(second["model"][name], tensor) and second["model"][name].data_ptr() != tensor.data_ptr()


def test_retention_keeps_last_k_and_the_best(storage: Storage, tmp_path: Path) -> None:
    _, _, state = train_state()
    with manager(storage, tmp_path, keep_last=2, metric_mode="max") as ckpt:
        for step, metric in [(1, 0.9), (2, 0.1), (3, 0.2), (4, 0.3), (5, 0.4)]:
            ckpt.save(step, state, metric=metric)
        ckpt.wait()
        assert steps(storage) == [1, 4, 5]
        assert ckpt.latest().step == 5
    with manager(storage, tmp_path, keep_last=1, keep_best=False) as ckpt:
        ckpt.save(6, state, metric=0.0, blocking=True)
        assert steps(storage) == [6]


def test_retention_min_mode_and_stale_uncommitted_prefixes(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "ckpt")
    _, _, state = train_state()
    storage.put_bytes("checkpoint-00000000/state.pt", b"left by a crashed save")
    storage.put_bytes("checkpoint-00000099/state.pt", b"newer than any commit: maybe still in flight")
    with manager(storage, tmp_path, keep_last=1, metric_mode="min") as ckpt:
        for step, loss in [(1, 0.5), (2, 0.2), (3, 0.4)]:
            ckpt.save(step, state, metric=loss, blocking=True)
    assert steps(storage) == [2, 3, 99]


def test_corrupt_object_is_skipped_with_a_warning(
    storage: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, state = train_state()
    with manager(storage, tmp_path, keep_last=3) as ckpt:
        ckpt.save(10, state, rank_state=rng_state(), blocking=True)
        ckpt.save(20, state, rank_state=rng_state(), blocking=True)
    storage.put_bytes("checkpoint-00000020/state.pt", b"bit rot")
    with caplog.at_level(logging.WARNING, logger="finetune_trainer.checkpoint"), manager(storage, tmp_path) as ckpt:
        info = ckpt.latest()
        assert info is not None and info.step == 10
        loaded, _ = ckpt.load(info)
    assert loaded["trainer"]["step"] == 2
    assert "checkpoint-00000020" in caplog.text and "state.pt" in caplog.text and "does not match" in caplog.text


def test_checkpoint_without_manifest_is_skipped(
    storage: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, state = train_state()
    with manager(storage, tmp_path, keep_last=3) as ckpt:
        ckpt.save(10, state, blocking=True)
        ckpt.save(20, state, blocking=True)
    storage.delete(["checkpoint-00000020/manifest.json"])
    with caplog.at_level(logging.WARNING, logger="finetune_trainer.checkpoint"), manager(storage, tmp_path) as ckpt:
        assert ckpt.latest().step == 10
    assert "checkpoint-00000020" in caplog.text and "no manifest" in caplog.text


def test_manifest_lists_every_object_with_size_and_sha256(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "ckpt")
    _, _, state = train_state()
    with manager(storage, tmp_path) as ckpt:
        stats = ckpt.save(7, state, rank_state=rng_state(), metric=1.5, blocking=True)
    manifest = json.loads(storage.get_bytes("checkpoint-00000007/manifest.json"))
    assert (manifest["step"], manifest["metric"], manifest["world_size"]) == (7, 1.5, 1)
    assert [o["key"] for o in manifest["objects"]] == ["state.pt", "rank-00000.pt"]
    for obj in manifest["objects"]:
        data = storage.get_bytes(f"checkpoint-00000007/{obj['key']}")
        assert obj["size"] == len(data)
        assert obj["sha256"] == __import__("hashlib").sha256(data).hexdigest()
    assert stats.bytes == sum(o["size"] for o in manifest["objects"])


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    from finetune_trainer.checkpoint import CheckpointError

    store = LocalStorage(tmp_path)
    with pytest.raises(CheckpointError, match="metric_mode"):
        CheckpointManager(store.url, storage=store, metric_mode="best")
    with pytest.raises(CheckpointError, match="rank 2 / world_size 2"):
        CheckpointManager(store.url, storage=store, rank=2, world_size=2)
    with (
        CheckpointManager(store.url, storage=store, world_size=2) as ckpt,
        pytest.raises(CheckpointError, match="init_process_group"),
    ):
        ckpt.save(1, {})


def wait_for_multipart_upload(s3_server: S3Server, timeout: float = 30.0) -> None:
    client = s3_server.client()
    deadline = time.monotonic() + timeout
    while not client.list_multipart_uploads(Bucket=s3_server.bucket).get("Uploads"):
        assert time.monotonic() < deadline, "no multipart upload started"
        time.sleep(0.01)


@pytest.mark.slow
def test_upload_survives_an_s3_outage_and_no_partial_checkpoint_is_visible(s3_server: S3Server, tmp_path: Path) -> None:
    config = s3_server.config(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=1, max_attempts=2
    )
    storage = open_storage(s3_server.url("ckpt"), config=config)
    reader = open_storage(s3_server.url("ckpt"), config=config)
    _, _, small = train_state()
    big = {"weights": torch.randn(64 * MiB // 4), "trainer": {"step": 2}}
    with manager(storage, tmp_path / "writer") as ckpt, manager(reader, tmp_path / "reader") as other:
        ckpt.save(1, small, blocking=True)
        ckpt.save(2, big)
        wait_for_multipart_upload(s3_server)
        s3_server.stop(crash=True)  # mid-upload
        time.sleep(2.0)
        s3_server.start()
        info = other.latest()  # while the upload is retried: the old checkpoint or a complete new one
        loaded, _ = other.load(info)
        assert info.step == 1 or torch.equal(loaded["weights"], big["weights"])
        ckpt.wait()
        assert storage.retries > 0, "the upload was retried after the outage"
        info = other.latest()
        assert info.step == 2
        loaded, _ = other.load(info)
    assert torch.equal(loaded["weights"], big["weights"])


def test_failed_background_upload_is_raised_once_and_leaves_no_checkpoint(s3_server: S3Server, tmp_path: Path) -> None:
    config = s3_server.config(max_attempts=1, retry_deadline_s=0.5)
    storage = open_storage(s3_server.url("ckpt"), config=config)
    _, _, state = train_state()
    with manager(storage, tmp_path) as ckpt:
        s3_server.stop(crash=True)
        ckpt.save(1, state)
        with pytest.raises(StorageError, match="cannot reach"):
            ckpt.wait()
        ckpt.wait()  # the error was reported once
        s3_server.start()
        assert ckpt.latest() is None
        ckpt.save(2, state, blocking=True)
        assert ckpt.latest().step == 2
    assert isinstance(storage, S3Storage)


def test_local_scratch_is_cleaned_up(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "ckpt")
    _, _, state = train_state()
    with manager(storage, tmp_path) as ckpt:
        ckpt.save(1, state, rank_state=rng_state(), blocking=True)
        ckpt.load(ckpt.latest())
        assert list(ckpt.staging.iterdir()) == [], "staged and verified files are removed after use"
    own = CheckpointManager(storage.url, storage=storage)
    own.save(2, state, blocking=True)
    own.close()
    assert not own.staging.exists(), "a temporary staging directory is removed on close"
