"""The local serving path a newcomer follows, as three separate commands with nothing set in the environment:
`finetune run` publishes a model, `finetune serve` serves it, `finetune predict` asks it; SIGTERM then stops the
server and every process it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from tests.fixtures.processes import free_port

pytestmark = pytest.mark.slow

FINETUNE = str(Path(sys.executable).with_name("finetune"))


def clean_env() -> dict[str, str]:
    """This environment without any FINETUNE_* variable: what a user's shell has."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}


def wait_ready(port: int, model: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"finetune serve exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{model} not ready after {timeout}s"
        time.sleep(0.5)


def test_run_then_serve_then_predict_then_sigterm(tmp_path, tiny_bert, sentiment_csv):
    train, val = sentiment_csv
    job = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "reviews"},
        "spec": {
            "model": {"name": str(tiny_bert)},
            "dataset": {"train": str(train), "validation": str(val)},
            "hyperparameters": {"epochs": 4, "learningRate": 3e-3, "precision": "fp32", "maxSeqLength": 32,
                                "truncation": "head_tail", "headTokens": 8},
            "serving": {"repository": "models", "backend": "python"},  # relative, as in the README
        },
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    env = clean_env()
    done = subprocess.run([FINETUNE, "run", "job.yaml", "--runs", "runs"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # The served tokenizer encodes as the job trained: once, every published model kept the first 512 tokens.
    served = json.loads((tmp_path / "models" / "reviews_tokenizer" / "1" / "preprocessing.json").read_text())
    assert (served["max_length"], served["truncation"], served["head_tokens"]) == (32, "head_tail", 8)

    http, grpc, metrics = free_port(), free_port(), free_port()
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen([FINETUNE, "serve", "models", "--http-port", str(http), "--grpc-port", str(grpc),
                              "--metrics-port", str(metrics)], cwd=tmp_path, env=env, stdout=log, stderr=log)
    started: list[psutil.Process] = []
    try:
        wait_ready(http, "reviews_text", serve)
        started = psutil.Process(serve.pid).children(recursive=True)
        assert any(p.name() == "tritonserver" for p in started)
        for url, flag in ((f"127.0.0.1:{http}", []), (f"127.0.0.1:{grpc}", ["--grpc"])):
            answer = subprocess.run([FINETUNE, "predict", "--url", url, *flag, "--model", "reviews", "--json",
                                     "a wonderful and brilliant film", "awful boring plot"],
                                    env=env, capture_output=True, text=True, timeout=120)
            assert answer.returncode == 0, answer.stderr
            rows = [json.loads(line) for line in answer.stdout.splitlines()]
            assert [r["label"] for r in rows] == ["positive", "negative"], rows
            assert all(sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5) for r in rows)

        serve.send_signal(signal.SIGTERM)  # to `finetune serve` alone, as a process manager would
        assert serve.wait(timeout=60) == 128 + signal.SIGTERM
        assert [p for p in started if alive(p)] == []
    finally:
        log.close()
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        for p in started:
            if alive(p):
                p.kill()


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
