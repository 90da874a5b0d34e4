"""Each extra installs alone into a fresh virtual environment (no system site packages) and its entry points
start there: a dependency that only the dev environment provides (the operator image once lacked boto3,
which the controller needs to read progress from S3) fails here before any image is built.

Slow: each environment is a real install from the package index, made with uv, whose cache under .cache/uv
keeps every downloaded wheel and links it into the next environment (pip's cache keeps nothing here: the index
answers it with no-store). The trainer's environment is torch, about 4.7 GB, pinned to the version
scripts/test.sh installs: a cold run downloads it once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = str(Path(sys.executable).with_name("uv")) if Path(sys.executable).with_name("uv").exists() else shutil.which("uv")
TORCH = "torch==2.13.0"  # as scripts/test.sh: a bare `torch` could resolve to another multi-GB build

# What each image or user runs, and what must not come along.
CHECKS = {
    "operator": """
        import importlib.util, subprocess, sys
        import finetune_operator.handlers  # kopf's registry: every handler, the controller, the client
        from finetune_trainer.storage import open_storage
        from finetune_trainer.storage_s3 import S3Config
        # The controller's progress read: an S3 storage client (no request is sent).
        open_storage("s3://bucket/jobs", config=S3Config(endpoint_url="http://127.0.0.1:9", access_key="k",
                                                          secret_key="s"), check=False)
        subprocess.run([sys.executable, "-m", "finetune_operator", "--help"], check=True, capture_output=True)
        subprocess.run(["finetune", "crd"], check=True, capture_output=True)
        assert importlib.util.find_spec("torch") is None, "the operator extra pulls in torch"
    """,
    "trainer": """
        import importlib.util, subprocess, sys
        import finetune_trainer.loop, finetune_trainer.export, finetune_trainer.publish, finetune_trainer.checkpoint
        for command in ("train", "export", "publish"):
            subprocess.run([sys.executable, "-m", "finetune_trainer", command, "--help"], check=True,
                           capture_output=True)
        assert importlib.util.find_spec("kopf") is None, "the trainer extra pulls in kopf"
    """,
    "serve": """
        import subprocess
        import finetune_operator.predict
        subprocess.run(["finetune", "predict", "--help"], check=True, capture_output=True)
    """,
}


def install(extra: str, venv: Path) -> Path:
    """A virtual environment of the base interpreter (none of the test environment's packages) with the
    project and this extra only."""
    env = {**os.environ, "UV_CACHE_DIR": str(ROOT / ".cache" / "uv")}
    subprocess.run([UV, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, env=env)
    python = venv / "bin" / "python"
    constraints = venv / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    result = subprocess.run(
        [UV, "pip", "install", "--quiet", "--native-tls", "--python", str(python), "-c", str(constraints),
         "-e", f"{ROOT}[{extra}]"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert result.returncode == 0, f"installing .[{extra}] failed:\n{result.stderr[-3000:]}"
    return python


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("extra", sorted(CHECKS))
def test_each_extra_alone_runs_its_entry_points(extra: str, tmp_path: Path) -> None:
    python = install(extra, tmp_path / f"venv-{extra}")
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([str(python), "-c", textwrap.dedent(CHECKS[extra])], capture_output=True, text=True,
                            env=env, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, f"the {extra} extra alone cannot run its entry points:\n{result.stderr[-3000:]}"
