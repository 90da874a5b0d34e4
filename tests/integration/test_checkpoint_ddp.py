"""Two real torchrun processes (gloo) save checkpoints to S3 and resume from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.s3 import S3Server

WORKER = Path(__file__).with_name("checkpoint_ddp_worker.py")


def torchrun(mode: str, url: str, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += [str(WORKER), mode, url, str(out)]
    full_env = {**os.environ, **env, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=full_env)


@pytest.mark.slow
def test_two_ranks_save_and_resume_from_s3(s3_server: S3Server, tmp_path: Path) -> None:
    url = s3_server.url("jobs/ddp/checkpoints")
    # A done marker left by an earlier, crashed attempt at step 4: rank 0 must not commit with it.
    stale = {"save_id": "earlier-attempt", "rank": 1, "objects": [{"key": "rank-00001.pt", "size": 1, "sha256": "0"}]}
    s3_server.client().put_object(
        Bucket=s3_server.bucket, Key="jobs/ddp/checkpoints/checkpoint-00000004/done-00001.json", Body=json.dumps(stale)
    )
    saved = torchrun("save", url, tmp_path, s3_server.env())
    assert saved.returncode == 0, saved.stdout + saved.stderr
    assert "rank 0: saved OK" in saved.stdout and "rank 1: saved OK" in saved.stdout

    listing = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="jobs/ddp/checkpoints/")
    keys = sorted(o["Key"].removeprefix("jobs/ddp/checkpoints/") for o in listing["Contents"])
    step4 = [k.split("/")[1] for k in keys if k.startswith("checkpoint-00000004/")]
    assert step4 == ["done-00001.json", "manifest.json", "rank-00000.pt", "rank-00001.pt", "state.pt"]
    assert {k.split("/")[0] for k in keys} == {"checkpoint-00000002", "checkpoint-00000004"}
    body = s3_server.client().get_object(
        Bucket=s3_server.bucket, Key="jobs/ddp/checkpoints/checkpoint-00000004/manifest.json"
    )["Body"]
    manifest = json.loads(body.read())
    assert manifest["world_size"] == 2
    assert sorted(o["key"] for o in manifest["objects"]) == ["rank-00000.pt", "rank-00001.pt", "state.pt"]

    resumed = torchrun("resume", url, tmp_path, s3_server.env())
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "rank 0: resumed step 4 OK" in resumed.stdout and "rank 1: resumed step 4 OK" in resumed.stdout
