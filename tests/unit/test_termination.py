"""The termination message a trainer or publish container leaves for the operator."""

from __future__ import annotations

import pytest

from finetune_trainer import termination


@pytest.fixture
def message_file(tmp_path, monkeypatch):
    path = tmp_path / "termination-log"
    path.write_text("")
    monkeypatch.setenv(termination.PATH_ENV, str(path))
    return path


def test_fail_reports_the_error_and_exit_code_on_stderr_and_in_the_message(message_file, capsys) -> None:
    assert termination.fail("dataset.train: no such file train.csv", 2) == 2
    assert capsys.readouterr().err == "error: dataset.train: no such file train.csv\n"
    said = termination.parse(message_file.read_text())
    assert said == termination.Termination(error="dataset.train: no such file train.csv", exit_code=2)


def test_a_long_error_is_cut_but_keeps_its_exit_code(message_file) -> None:
    termination.fail("x" * 10_000, 3)
    text = message_file.read_bytes()
    assert len(text) <= termination.LIMIT
    said = termination.parse(text.decode())
    assert said.exit_code == 3 and said.error is not None and said.error.endswith("...")


def test_published_round_trip(message_file) -> None:
    assert termination.write(termination.published_line("sentiment", 7, reused=True))
    assert termination.parse(message_file.read_text()).published == {"name": "sentiment", "version": 7, "reused": True}


def test_without_the_file_nothing_is_written(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(termination.PATH_ENV, str(tmp_path / "absent"))
    assert not termination.write("error: x")
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("text", ["", "Traceback ...", 'published: {"name": "x"}', "published: [1]", "exitcode: x"])
def test_messages_without_the_lines_say_nothing(text: str) -> None:
    assert termination.parse(text) == termination.Termination()
