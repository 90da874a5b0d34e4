"""`finetune serve REPO`: a local tritonserver over a model repository, or a clear message when none exists."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from finetune_operator import serve_local
from tests.fixtures.triton import free_port


def args_for(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_local.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_no_tritonserver_installed(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(serve_local, "_pytriton_root", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert serve_local.run(args_for(str(tmp_path))) == 2
    err = capsys.readouterr().err
    assert "no Triton Inference Server found" in err and "pip install nvidia-pytriton" in err


def test_repository_must_be_a_folder(tmp_path: Path, capsys):
    assert serve_local.run(args_for(str(tmp_path / "missing"))) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_starts_tritonserver_and_stops_on_interrupt(tmp_path: Path):
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    code = (
        "import argparse, sys\n"
        "from finetune_operator import serve_local\n"
        "p = argparse.ArgumentParser(); serve_local.add_arguments(p)\n"
        "sys.exit(serve_local.run(p.parse_args(sys.argv[1:])))\n"
    )
    argv = [sys.executable, "-c", code, str(tmp_path), "--http-port", str(http), "--grpc-port", str(grpc)]
    proc = subprocess.Popen([*argv, "--metrics-port", str(metrics)], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "finetune serve exited early"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tritonserver did not become ready"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        assert proc.wait(timeout=40) in (0, 130, -signal.SIGINT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
