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
