"""Training that survives failures: real 2-process torchrun runs checkpointing to a real S3 server, killed,
preempted and cut off from S3, then checked the way a user would: the step counter and the data order continue,
and the result equals an uninterrupted run's."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.models import sentiment_rows, write_csv

pytestmark = pytest.mark.slow

# Per rank: 1024 rows / 2 ranks / batch 4 = 128 steps an epoch; 150 steps cross an epoch boundary, and a kill
# soon after the step-10 checkpoint lands mid-epoch however fast the machine is.
STEPS, EVERY, BATCH, STEPS_PER_EPOCH = 150, 10, 4, 128
# Losses are summed over two ranks by gloo in a fixed order, and CPU kernels are deterministic for a fixed
# thread count, so a resumed run reproduces the uninterrupted one to float32 rounding.
TOLERANCE = 1e-5


def config(tmp: Path, model: Path, data: tuple[Path, Path], storage: str, **hp) -> Path:
    cfg = {
        "jobName": "resume",
        "outputDir": str(tmp / "out"),
        "progressFile": str(tmp / "progress.json"),
        "model": {"name": str(model)},
        "dataset": {"train": str(data[0]), "validation": str(data[1])},
        "hyperparameters": {
            "maxSteps": STEPS, "learningRate": 2e-3, "batchSize": BATCH, "logEverySteps": 1, "evalSteps": STEPS,
            "precision": "fp32", **hp,
        },
        "checkpoint": {"storage": storage, "everySteps": EVERY, "keepLast": 2},
    }
    path = tmp / "job.json"
    path.write_text(json.dumps(cfg))
    return path


def start(cfg: Path, env: dict[str, str], nproc: int = 2, max_restarts: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           f"--max-restarts={max_restarts}",
           "-m", "finetune_trainer", "train", "--config", str(cfg)]
    log = open(cfg.parent / f"log-{time.monotonic_ns()}.txt", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_step(cfg: Path, proc: subprocess.Popen, step: int, timeout: float = 180) -> int:
    progress = cfg.parent / "progress.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"trainer exited early: {logs(cfg)[-3000:]}"
        if progress.exists():
            seen = json.loads(progress.read_text())["step"]
            if seen >= step:
                return seen
        time.sleep(0.02)
    raise AssertionError(f"no step {step} within {timeout}s: {logs(cfg)[-3000:]}")


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal torchrun and every worker (torchrun starts workers in their own sessions)."""
    import psutil

    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)
    psutil.wait_procs(procs, timeout=30)


def wait_for_log(cfg: Path, proc: subprocess.Popen, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in logs(cfg):
        assert proc.poll() is None and time.monotonic() < deadline, f"no {text!r}: {logs(cfg)[-3000:]}"
        time.sleep(0.02)


def logs(cfg: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(cfg.parent.glob("log-*.txt")))


def finish(proc: subprocess.Popen, cfg: Path, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        kill_tree(proc)


def metrics(cfg: Path) -> dict:
    return json.loads((cfg.parent / "out" / "metrics.json").read_text())


def losses_after(m: dict, step: int) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in m["history"] if h["step"] > step}


@pytest.fixture(scope="module")
def sentiment_csv(tmp_path_factory):
    """A larger training set than the shared one, so that an epoch lasts long enough to be interrupted."""
    d = tmp_path_factory.mktemp("resume-data")
    return write_csv(d / "train.csv", sentiment_rows(1024, seed=12)), write_csv(d / "val.csv", sentiment_rows(64, 13))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_bert, sentiment_csv):
    """An uninterrupted run with the same seed, for comparison (where checkpoints go changes nothing)."""
    d = tmp_path_factory.mktemp("reference")
    cfg = config(d, tiny_bert, sentiment_csv, str(d / "checkpoints"))
    proc = start(cfg, {})
    assert finish(proc, cfg) == 0, logs(cfg)[-3000:]
    return metrics(cfg)


def test_sigkill_mid_epoch_resumes_from_last_checkpoint(tmp_path, tiny_bert, sentiment_csv, s3_server,
                                                        reference_run):
    storage = s3_server.url("killed")
    cfg = config(tmp_path, tiny_bert, sentiment_csv, storage)
    proc = start(cfg, s3_server.env())
    wait_for_log(cfg, proc, f"checkpoint-{EVERY:08d} committed")
    killed_at = wait_for_step(cfg, proc, EVERY + 3)  # past the step-10 checkpoint, in the first epoch
    kill_tree(proc)  # the agent and all workers at once, as a node loss would
    proc.wait()
    assert EVERY < killed_at < STEPS_PER_EPOCH, "killed mid-epoch"

    proc = start(cfg, s3_server.env())
    assert finish(proc, cfg) == 0, logs(cfg)[-3000:]
    assert "resumed from checkpoint at step 10" in logs(cfg)
    resumed = metrics(cfg)
    steps = [h["step"] for h in resumed["history"]]  # the history up to the checkpoint travels with it
    assert steps == list(range(1, STEPS + 1)), "each step trained once: none lost, none repeated"
    assert not any(f"step={s}/{STEPS} " in logs(cfg).split("resumed from")[1] for s in range(1, EVERY + 1))
    assert resumed["steps"] == STEPS

    expected = losses_after(reference_run, EVERY)
    got = losses_after(resumed, EVERY)
    assert got.keys() == expected.keys()
    for step, loss in expected.items():  # same data order and same RNG after the checkpoint
        assert got[step] == pytest.approx(loss, abs=TOLERANCE), f"step {step}"
    assert resumed["validation"]["loss"] == pytest.approx(reference_run["validation"]["loss"], abs=TOLERANCE)
    assert resumed["validation"]["accuracy"] == reference_run["validation"]["accuracy"]


def test_torchrun_restarts_a_crashed_worker_group_from_the_checkpoint(tmp_path, tiny_bert, sentiment_csv,
                                                                      reference_run):
    import psutil

    cfg = config(tmp_path, tiny_bert, sentiment_csv, str(tmp_path / "checkpoints"))
    proc = start(cfg, {}, max_restarts=1)
    wait_for_log(cfg, proc, f"checkpoint-{EVERY:08d} committed")
    wait_for_step(cfg, proc, EVERY + 2)
    workers = psutil.Process(proc.pid).children(recursive=True)
    workers[-1].kill()  # one rank dies (OOM-killed, segfault); torchrun restarts the whole group
    assert finish(proc, cfg) == 0, logs(cfg)[-3000:]
    resumed = re.search(r"resumed from checkpoint at step (\d+)", logs(cfg))
    assert resumed and int(resumed.group(1)) >= EVERY, logs(cfg)[-3000:]
    m = metrics(cfg)
    assert [h["step"] for h in m["history"]] == list(range(1, STEPS + 1))
    assert m["validation"]["loss"] == pytest.approx(reference_run["validation"]["loss"], abs=TOLERANCE)


def test_sigterm_saves_a_final_checkpoint_and_exits_cleanly(tmp_path, tiny_bert, sentiment_csv, s3_server):
    from finetune_trainer.checkpoint import CheckpointManager
    from finetune_trainer.storage import open_storage

    storage = s3_server.url("preempted")
    cfg = config(tmp_path, tiny_bert, sentiment_csv, storage)
    env = s3_server.env()
    proc = start(cfg, {**env, "FINETUNE_ATTEMPT": "1"}, nproc=1)
    wait_for_step(cfg, proc, EVERY + 3)
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # what the kubelet sends when a pod is deleted or preempted
    proc.wait(timeout=30)
    assert time.monotonic() - started < 30, "within a default termination grace period"
    assert "SIGTERM: saving a final checkpoint" in logs(cfg)

    os.environ.update(env)
    try:
        store = open_storage(f"{storage}/default/resume")
        latest = CheckpointManager(store.url, storage=store).latest()
    finally:
        for key in env:
            os.environ.pop(key, None)
    assert latest is not None and latest.step > EVERY, "a checkpoint beyond the periodic one was committed"
    # What the operator reads: the final checkpoint, written before the trainer stopped.
    said = json.loads((tmp_path / "progress.json").read_text())
    assert said["checkpoint"]["step"] == latest.step and said["attempt"] == 1 and said["resumedFrom"] == 0
    assert said["checkpoint"]["uri"] == f"{store.url}/{latest.key}"

    proc = start(cfg, {**env, "FINETUNE_ATTEMPT": "2"}, nproc=1)
    assert finish(proc, cfg) == 0, logs(cfg)[-3000:]
    assert f"resumed from checkpoint at step {latest.step}" in logs(cfg)
    assert [h["step"] for h in metrics(cfg)["history"]] == list(range(1, STEPS + 1))
    said = json.loads((tmp_path / "progress.json").read_text())
    assert said["attempt"] == 2 and said["resumedFrom"] == latest.step and said["checkpoint"]["step"] >= latest.step


def test_single_process_sigterm_exit_code(tmp_path, tiny_bert, sentiment_csv, s3_server):
    cfg = config(tmp_path, tiny_bert, sentiment_csv, s3_server.url("single"))
    proc = subprocess.Popen([sys.executable, "-m", "finetune_trainer", "train", "--config", str(cfg)],
                            env={**os.environ, **s3_server.env()}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_step(cfg, proc, 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()


def test_s3_outage_during_training(tmp_path, tiny_bert, sentiment_csv, s3_server, reference_run):
    storage = s3_server.url("outage")
    cfg = config(tmp_path, tiny_bert, sentiment_csv, storage)
    proc = start(cfg, s3_server.env())
    try:
        wait_for_step(cfg, proc, EVERY - 2)
        s3_server.stop()  # down across the step-10 save
        wait_for_step(cfg, proc, EVERY + 2)
        time.sleep(1.0)
    finally:
        s3_server.start()
    assert finish(proc, cfg) == 0, logs(cfg)[-3000:]
    m = metrics(cfg)
    assert m["steps"] == STEPS
    assert m["validation"]["loss"] == pytest.approx(reference_run["validation"]["loss"], abs=TOLERANCE)

    from finetune_trainer.checkpoint import CheckpointManager
    from finetune_trainer.storage import open_storage

    store = open_storage(f"{storage}/default/resume", config=s3_server.config())
    latest = CheckpointManager(store.url, storage=store).latest()
    assert latest is not None and latest.step == STEPS - STEPS % EVERY


def test_wrong_credentials_fail_with_one_line_and_no_secret(tmp_path, tiny_bert, sentiment_csv, s3_server):
    cfg = config(tmp_path, tiny_bert, sentiment_csv, s3_server.url("denied"))
    env = {**os.environ, **s3_server.env(), "AWS_SECRET_ACCESS_KEY": "wrong-secret-c4n4ry"}
    proc = subprocess.run([sys.executable, "-m", "finetune_trainer", "train", "--config", str(cfg)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "access denied" in errors[0] and "check the access key" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert "wrong-secret-c4n4ry" not in proc.stderr + proc.stdout
