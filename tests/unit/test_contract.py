"""The contract between the operator and the trainer: termination message, progress record, storage layout."""

from __future__ import annotations

import json
import math

import pytest

from finetune_trainer import contract


@pytest.fixture
def message_file(tmp_path, monkeypatch):
    path = tmp_path / "termination-log"
    path.write_text("")
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(path))
    return path


def test_fail_reports_the_error_and_exit_code_on_stderr_and_in_the_message(message_file, capsys) -> None:
    assert contract.fail("dataset.train: no such file train.csv", 2) == 2
    assert capsys.readouterr().err == "error: dataset.train: no such file train.csv\n"
    said = contract.parse_termination(message_file.read_text())
    assert said == contract.Termination(error="dataset.train: no such file train.csv", exit_code=2)


def test_a_long_error_is_cut_but_keeps_its_exit_code(message_file) -> None:
    contract.fail("x" * 10_000, 3)
    text = message_file.read_bytes()
    assert len(text) <= contract.TERMINATION_LIMIT
    said = contract.parse_termination(text.decode())
    assert said.exit_code == 3 and said.error is not None and said.error.endswith("...")


def test_a_crash_keeps_the_first_error_of_the_pod(message_file) -> None:
    """Ranks that fail after the first (a collective with a dead peer) do not hide the cause."""
    contract.fail("OutOfMemoryError: CUDA out of memory.\nTried to allocate 2.00 GiB", 1, first=True)
    contract.fail("DistBackendError: NCCL communicator was aborted", 1, first=True)
    said = contract.parse_termination(message_file.read_text())
    assert said == contract.Termination(error="OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
                                        exit_code=1)  # fmt: skip
    assert contract.read_termination() == said
    contract.fail("dataset.train: no such file", 2)  # without first: the newest word
    assert contract.read_termination().exit_code == 2


def test_the_progress_record_carries_the_checkpoint_and_where_the_attempt_resumed() -> None:
    ckpt = contract.CheckpointRecord(step=40, time=1767268800.0, uri="s3://ckpt/ml/a/uid/checkpoint-00000040")
    record = contract.ProgressRecord(step=47, total_steps=100, attempt=2, resumed_from=40, checkpoint=ckpt)
    raw = json.loads(record.to_json())
    assert raw["checkpoint"] == {"step": 40, "time": 1767268800.0, "uri": "s3://ckpt/ml/a/uid/checkpoint-00000040"}
    assert (raw["attempt"], raw["resumedFrom"]) == (2, 40)
    assert contract.ProgressRecord.from_dict(raw) == record
    # An older trainer's record has none of them; a malformed one is dropped field by field.
    old = contract.ProgressRecord.from_dict({"step": 3, "attempt": "2", "checkpoint": {"step": "x"}})
    assert old is not None and (old.attempt, old.resumed_from, old.checkpoint) == (None, None, None)
    assert "checkpoint" not in contract.ProgressRecord(step=1).to_dict()


def test_published_round_trip(message_file) -> None:
    assert contract.write_termination(contract.published_line("sentiment", 7, reused=True))
    said = contract.parse_termination(message_file.read_text())
    assert said.published == {"name": "sentiment", "version": 7, "reused": True}


def test_without_the_file_nothing_is_written(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(tmp_path / "absent"))
    assert not contract.write_termination("error: x")
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("text", ["", "Traceback ...", 'published: {"name": "x"}', "published: [1]", "exitcode: x"])
def test_messages_without_the_lines_say_nothing(text: str) -> None:
    assert contract.parse_termination(text) == contract.Termination()


def test_a_job_folder_is_keyed_by_its_uid_and_old_runs_keep_the_name_layout() -> None:
    assert contract.job_prefix("s3://ckpt/jobs/", "ml", "sentiment", "uid-1") == "s3://ckpt/jobs/ml/sentiment/uid-1"
    assert contract.job_prefix("s3://ckpt/jobs", None, "sentiment", None) == "s3://ckpt/jobs/default/sentiment"
    assert contract.progress_key("ml", "sentiment", "uid-1") == "ml/sentiment/uid-1/progress.json"
    # A job deleted and created again under the same name gets a new uid, so a folder of its own.
    assert contract.job_key("ml", "sentiment", "uid-2") != contract.job_key("ml", "sentiment", "uid-1")


def test_a_progress_record_round_trips_through_json() -> None:
    record = contract.ProgressRecord(step=30, total_steps=120, epoch=0.5, percent=25.0, eta_seconds=90.0,
                                     metrics={"loss": 0.41, "samples_per_second": 55.5}, time=1.0)  # fmt: skip
    assert contract.ProgressRecord.from_json(record.to_json()) == record
    assert json.loads(record.to_json())["totalSteps"] == 120


def test_non_finite_numbers_never_cross_in_either_direction() -> None:
    written = contract.ProgressRecord(step=3, epoch=math.nan, metrics={"loss": math.inf, "grad_norm": math.nan,
                                                                       "learning_rate": 1e-4})  # fmt: skip
    assert json.loads(written.to_json())["metrics"] == {"learning_rate": 1e-4}  # valid JSON: no NaN token
    # What an older trainer wrote with json.dumps' defaults.
    raw = b'{"step": 3, "epoch": NaN, "etaSeconds": Infinity, "metrics": {"loss": NaN, "accuracy": 0.9}}'
    read = contract.ProgressRecord.from_json(raw)
    assert read is not None and read.metrics == {"accuracy": 0.9} and read.eta_seconds is None and read.epoch == 0
    json.dumps(read.to_dict(), allow_nan=False)


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"step": "3"}', b"not json"])
def test_what_is_not_a_progress_record_reads_as_none(raw: bytes) -> None:
    assert contract.ProgressRecord.from_json(raw) is None


@pytest.mark.parametrize(
    ("url", "protocol", "address"),
    [("triton:8000", "http", "triton:8000"), ("http://triton:8000/", "http", "triton:8000"),
     ("https://triton.example", "https", "triton.example"), ("grpc://127.0.0.1:8001", "grpc", "127.0.0.1:8001")],
)  # fmt: skip
def test_triton_urls_become_a_protocol_and_an_address(url: str, protocol: str, address: str) -> None:
    assert contract.triton_address(url) == contract.TritonAddress(protocol, address)
