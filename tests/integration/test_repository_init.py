"""`python -m finetune_trainer init-repository`: an empty S3 prefix becomes a folder Triton can start over; an
existing repository is left as it is; an unreachable one fails with exit code 3 and the URL named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from finetune_trainer.repository_init import init_repository
from tests.fixtures.s3 import S3Server


def run(url: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "finetune_trainer", "init-repository", url], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_an_empty_prefix_gets_its_folder_marker_once(s3_server: S3Server, monkeypatch) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    client = s3_server.client()
    assert init_repository(s3_server.url("models")) is True
    listed = client.list_objects_v2(Bucket=s3_server.bucket, Prefix="models")["Contents"]
    assert [o["Key"] for o in listed] == ["models/"]
    client.put_object(Bucket=s3_server.bucket, Key="models/sentiment/config.pbtxt", Body=b'name: "sentiment"')
    assert init_repository(s3_server.url("models")) is False
    assert init_repository(s3_server.url("other")) is True


def test_the_command_says_what_it_did_and_fails_clearly(s3_server: S3Server, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", **s3_server.env()}
    done = run(s3_server.url("served"), env)
    assert done.returncode == 0 and f"model repository {s3_server.url('served')}: created" in done.stdout
    assert "exists" in run(s3_server.url("served"), env).stdout
    local = tmp_path / "repo"
    assert run(str(local), env).returncode == 0 and local.is_dir()
    refused = run("s3://no-such-bucket-here/models", env)
    assert refused.returncode == 3, refused.stderr
    assert "error: model repository s3://no-such-bucket-here/models" in refused.stderr
