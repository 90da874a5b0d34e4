"""Each extra installs alone into a fresh virtual environment (no system site packages) and its entry points
start there: a dependency that only the dev environment provides (the operator image once lacked boto3,
which the controller needs to read progress from S3) fails here before any image is built.

`operator` and `serve` are real installs of the extra from the package index, nothing else. `trainer` is checked
the cheapest honest way, without downloading torch (about 4.7 GB) for every run:
- its whole dependency set, torch pinned to the version scripts/test.sh installs, is resolved against the index
  (``uv pip install --dry-run``: metadata only), so a conflict with that torch fails here;
- every other package of the extra is installed for real, torch excluded from the resolution, and torch comes
  from the test environment as a folder holding only torch's own distributions (torch and what it requires,
  linked), the way a CUDA base image brings torch; then the trainer's entry points run. A package that only the
  dev extras bring fails the import; one that torch brings is there as in any install.

Slow: uv's cache under .cache/uv keeps every downloaded wheel and links it into the next environment (pip's
cache keeps nothing here: the index answers it with no-store).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
UV = str(Path(sys.executable).with_name("uv")) if Path(sys.executable).with_name("uv").exists() else shutil.which("uv")
TORCH = "torch==2.13.0"  # as scripts/test.sh: a bare `torch` could resolve to another multi-GB build

# What each image or user runs, and what must not come along.
CHECKS = {
    "operator": """
        import importlib.util, subprocess, sys
        import finetune_operator.handlers  # kopf's registry: every handler, the controller, the client
        import finetune_operator.cluster  # finetune submit|get|logs|delete
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
        import finetune_trainer.ensemble, finetune_trainer.lora, finetune_trainer.pretrain
        for command in ("train", "export", "publish", "combine"):
            subprocess.run([sys.executable, "-m", "finetune_trainer", command, "--help"], check=True,
                           capture_output=True)
        assert importlib.util.find_spec("kopf") is None, "the trainer extra pulls in kopf"
        import torch
        assert "torch-only" in torch.__file__, "torch was installed from the index, not linked"
    """,
    "serve": """
        import subprocess
        import finetune_operator.predict
        subprocess.run(["finetune", "predict", "--help"], check=True, capture_output=True)
    """,
}


def _uv(*args: str, python: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "UV_CACHE_DIR": str(ROOT / ".cache" / "uv")}
    return subprocess.run([UV, "pip", *args, "--quiet", "--native-tls", "--python", str(python)],
                          capture_output=True, text=True, env=env)  # fmt: skip


def new_venv(venv: Path) -> Path:
    """A virtual environment of the base interpreter: none of the test environment's packages."""
    env = {**os.environ, "UV_CACHE_DIR": str(ROOT / ".cache" / "uv")}
    subprocess.run([UV, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, env=env)
    return venv / "bin" / "python"


def install(extra: str, venv: Path) -> Path:
    """``venv`` with the project and this extra only (for ``trainer``: all but torch, see the module docstring)."""
    python = new_venv(venv)
    constraints = venv / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    target = ["-c", str(constraints), "-e", f"{ROOT}[{extra}]"]
    if extra == "trainer":
        resolved = _uv("install", "--dry-run", *target, python=python)
        assert resolved.returncode == 0, f"resolving .[trainer] with {TORCH} failed:\n{resolved.stderr[-3000:]}"
        excludes = venv / "excludes.txt"
        excludes.write_text("torch\n")
        target = ["--excludes", str(excludes), *target]
    result = _uv("install", *target, python=python)
    assert result.returncode == 0, f"installing .[{extra}] failed:\n{result.stderr[-3000:]}"
    if extra == "trainer":
        torch_only = link_distributions(torch_closure(), venv / "torch-only")
        site = next((venv / "lib").glob("python3*/site-packages"))
        (site / "zz-torch-only.pth").write_text(f"{torch_only}\n")  # after the venv's own packages
    return python


def torch_closure() -> set[str]:
    """torch and the distributions it requires, transitively, as installed in the test environment."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("torch", frozenset())]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        try:
            dist = importlib.metadata.distribution(key)
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement whose marker excludes this platform
        seen.add(key)
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            if canonicalize_name(req.name) not in seen:
                todo.append((req.name, frozenset(req.extras)))
    return seen


def link_distributions(names: set[str], folder: Path) -> Path:
    """A folder holding only ``names``' installed files (their top-level packages, modules and metadata), linked."""
    folder.mkdir()
    for name in names:
        dist = importlib.metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source, link = Path(str(dist.locate_file(top))), folder / top
            if top != "__pycache__" and source.exists() and not link.exists():
                link.symlink_to(source)
    return folder


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("extra", sorted(CHECKS))
def test_each_extra_alone_runs_its_entry_points(extra: str, tmp_path: Path) -> None:
    python = install(extra, tmp_path / f"venv-{extra}")
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([str(python), "-c", textwrap.dedent(CHECKS[extra])], capture_output=True, text=True,
                            env=env, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, f"the {extra} extra alone cannot run its entry points:\n{result.stderr[-3000:]}"
