"""One model version per job: publication under an idempotency key (the operator passes the job's uid), and the
termination message that tells the operator which version it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_trainer import contract
from finetune_trainer.publish import main, publish
from tests.fixtures.triton import snapshot

NAME = "once"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repository"
    path.mkdir()
    return path


def test_the_same_key_publishes_once_and_other_keys_add_versions(tiny_export: Path, repo: Path) -> None:
    first = publish(tiny_export, repo.as_uri(), NAME, key="uid-a")
    assert (first.version, first.reused) == (1, False)
    claim = json.loads((repo / NAME / ".claims" / "1.json").read_text())
    assert claim["key"] == "uid-a"
    before = snapshot(repo)

    again = publish(tiny_export, repo.as_uri(), NAME, key="uid-a")
    assert (again.version, again.reused, again.served_versions) == (1, True, [1])
    assert snapshot(repo) == before

    other = publish(tiny_export, repo.as_uri(), NAME, key="uid-b")
    assert (other.version, other.reused, other.served_versions) == (2, False, [1, 2])
    unkeyed = publish(tiny_export, repo.as_uri(), NAME)
    assert (unkeyed.version, unkeyed.reused) == (3, False)
    assert publish(tiny_export, repo.as_uri(), NAME, key="uid-a").version == 1, "still found among newer versions"


def test_an_interrupted_publication_under_the_key_is_not_reused(tiny_export: Path, repo: Path) -> None:
    """A publisher killed after its claim but before its configs leaves an unlisted version: publish afresh."""
    claims = repo / NAME / ".claims"
    claims.mkdir(parents=True)
    (claims / "1.json").write_text(json.dumps({"version": 1, "key": "uid-a"}))
    (repo / NAME / "1").mkdir()
    (repo / NAME / "1" / "model.onnx").write_bytes(b"half written")
    result = publish(tiny_export, repo.as_uri(), NAME, key="uid-a")
    assert (result.version, result.reused, result.served_versions) == (2, False, [2])
    assert (repo / NAME / "1" / "model.onnx").read_bytes() == b"half written", "never overwritten"


def test_the_command_leaves_the_version_in_its_termination_message(
    tiny_export: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = tmp_path / "termination-log"
    monkeypatch.setenv(contract.ENV_TERMINATION_LOG, str(message))
    argv = ["--export", str(tiny_export), "--repository", repo.as_uri(), "--name", NAME, "--idempotency-key", "u1"]
    for reused in (False, True):
        message.write_text("")
        assert main(argv) == 0
        said = contract.parse_termination(message.read_text())
        assert said.published == {"name": NAME, "version": 1, "reused": reused} and said.error is None

    message.write_text("")
    assert main([*argv[:1], str(tmp_path / "no-export"), *argv[2:]]) == 2
    said = contract.parse_termination(message.read_text())
    assert said.exit_code == 2 and "no export_report.json" in (said.error or "") and said.published is None


def test_a_publication_killed_between_its_configs_is_completed_not_repeated(tiny_export: Path, repo: Path) -> None:
    """The classifier's config names the new version first; a publisher killed right after it left the
    tokenizer, postprocess and ensemble configs on the previous versions. The retry finishes them."""
    publish(tiny_export, repo.as_uri(), NAME, key="uid-a")
    others = [f"{NAME}_tokenizer/config.pbtxt", f"{NAME}_postprocess/config.pbtxt", f"{NAME}_text/config.pbtxt"]
    earlier = {k: (repo / k).read_bytes() for k in others}
    publish(tiny_export, repo.as_uri(), NAME, key="uid-b")
    complete = snapshot(repo)
    for key, data in earlier.items():  # as the killed publisher left them
        (repo / key).write_bytes(data)
    assert snapshot(repo) != complete

    retried = publish(tiny_export, repo.as_uri(), NAME, key="uid-b")
    assert (retried.version, retried.reused, retried.served_versions) == (2, True, [1, 2])
    assert snapshot(repo) == complete
