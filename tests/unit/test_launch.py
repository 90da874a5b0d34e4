"""finetune_trainer.launch's arguments and waiting, and the operator's launcher command (no torch, no network)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from finetune_operator import api, names, rendezvous
from finetune_operator.settings import Settings
from finetune_trainer import launch
from finetune_trainer.launch import LaunchError

ARGS = ["--nnodes=4", "--rdzv-endpoint=job-a1-0.job-workers:29400", "--rdzv-id=uid-1",
        "--join-timeout=900", "--read-timeout=300"]  # fmt: skip
REST = ["--nproc-per-node=2", "--max-restarts=0", "-m", "finetune_trainer", "train", "--config", "/etc/f.json"]


def parsed(index: str, **env: str) -> launch.Launch:
    return launch.parse([*ARGS, "--", *REST], {"JOB_COMPLETION_INDEX": index, **env})


def test_node_0_hosts_the_store_through_loopback() -> None:
    args = launch.torchrun_args(parsed("0", FINETUNE_POD_IP="10.244.1.7"))
    assert args == [
        "--nnodes=4",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:29400",
        "--rdzv-id=uid-1",
        "--rdzv-conf=is_host=1,join_timeout=900,read_timeout=300",
        "--local-addr=10.244.1.7",
        *REST,
    ]


def test_other_nodes_join_through_the_endpoint_name() -> None:
    args = launch.torchrun_args(parsed("3"))
    assert "--rdzv-endpoint=job-a1-0.job-workers:29400" in args
    assert "--rdzv-conf=is_host=0,join_timeout=900,read_timeout=300" in args
    assert not any(a.startswith("--local-addr") for a in args)  # no pod IP: torch's own default (its FQDN)


def test_index_comes_from_the_indexed_job_before_the_contract_variable() -> None:
    assert launch.node_index({"JOB_COMPLETION_INDEX": "2", "FINETUNE_NODE_INDEX": "0"}) == 2
    assert launch.node_index({"FINETUNE_NODE_INDEX": "1"}) == 1


def test_ipv6_endpoint_keeps_its_brackets() -> None:
    got = launch.parse(["--nnodes=2", "--rdzv-endpoint=[fd00::7]:29400", "--rdzv-id=x", "--", "a.py"],
                       {"FINETUNE_NODE_INDEX": "1"})  # fmt: skip
    assert (got.host, got.port) == ("fd00::7", 29400)
    assert "--rdzv-endpoint=[fd00::7]:29400" in launch.torchrun_args(got)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([*ARGS, *REST], {"JOB_COMPLETION_INDEX": "0"}, "expected -- between"),
        ([*ARGS, "--"], {"JOB_COMPLETION_INDEX": "0"}, "nothing to run"),
        ([*ARGS, "--", "--rdzv-endpoint=x:1", *REST], {"JOB_COMPLETION_INDEX": "0"}, "--rdzv-endpoint after --"),
        ([*ARGS, "--", "--nnodes", "2", *REST], {"JOB_COMPLETION_INDEX": "0"}, "--nnodes after --"),
        ([*ARGS, "--", *REST], {}, "no node index"),
        ([*ARGS, "--", *REST], {"JOB_COMPLETION_INDEX": "-1"}, "JOB_COMPLETION_INDEX='-1'"),
        ([*ARGS, "--", *REST], {"JOB_COMPLETION_INDEX": "4"}, "node index 4 is outside a group of --nnodes=4"),
        (["--nnodes=2", "--rdzv-endpoint=h:99999", "--rdzv-id=x", "--", "a.py"], {"JOB_COMPLETION_INDEX": "0"},
         "expected HOST:PORT"),
        (["--nnodes=two", "--rdzv-endpoint=h:1", "--rdzv-id=x", "--", "a.py"], {"JOB_COMPLETION_INDEX": "0"},
         "argument --nnodes: expected a whole number of at least 1, got 'two'"),
        (["--nnodes=2", "--rdzv-endpoint=h:1", "--", "a.py"], {"JOB_COMPLETION_INDEX": "0"},
         "the following arguments are required: --rdzv-id"),
        (["--nnodes=2", "--rdzv-endpoint=h:1", "--rdzv-id=x", "--join=5", "--", "a.py"],
         {"JOB_COMPLETION_INDEX": "0"}, "unrecognized arguments: --join=5"),
    ],
)  # fmt: skip
def test_bad_options_say_what_is_wrong(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchError) as err:
        launch.parse(argv, env)
    assert message in str(err.value)


def test_program_arguments_after_the_module_are_not_checked() -> None:
    got = launch.parse(["--nnodes=2", "--rdzv-endpoint=h:1", "--rdzv-id=x", "--", "-m", "prog", "--nnodes=9"],
                       {"JOB_COMPLETION_INDEX": "0"})  # fmt: skip
    assert got.rest == ("-m", "prog", "--nnodes=9")


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_logs_each_new_reason_and_returns_once_the_host_is_up() -> None:
    t, lines = FakeTime(), []
    answers = iter(["its name does not resolve yet"] * 5 + ["10.0.0.5: Connection refused"] * 40 + [None])
    got = launch.wait_for_host(parsed("1"), lines.append, clock=t.clock, sleep=t.sleep,
                               check=lambda host, port: next(answers))  # fmt: skip
    assert got is None
    assert lines[0] == ("waiting for rendezvous host job-a1-0.job-workers:29400 (node 0): "
                        "its name does not resolve yet [0 of 900 s]")  # fmt: skip
    assert lines[1].endswith("10.0.0.5: Connection refused [5 of 900 s]")
    assert lines[2].endswith("10.0.0.5: Connection refused [35 of 900 s]")  # still waiting: a line every 30 s
    assert lines[-1] == "rendezvous host job-a1-0.job-workers:29400 is up after 45 s"


def test_wait_gives_up_after_the_join_timeout_with_the_last_reason() -> None:
    t = FakeTime()
    got = launch.wait_for_host(parsed("1"), lambda line: None, clock=t.clock, sleep=t.sleep,
                               check=lambda host, port: "its name does not resolve yet")  # fmt: skip
    assert got == "its name does not resolve yet"
    assert t.now == 900


def test_probe_tells_a_missing_name_from_a_closed_port() -> None:
    assert launch.probe("no-such-host.invalid", 1).startswith("its name does not resolve yet")
    assert "Connection refused" in launch.probe("127.0.0.1", 1)


def test_the_launcher_imports_no_torch() -> None:
    code = "import sys, finetune_trainer.launch; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_operator_command_carries_the_spec_timeouts() -> None:
    job = api.parse_job({
        "apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "job"},
        "spec": {"model": {"name": "m"}, "dataset": {"train": "a.csv"},
                 "resources": {"nodes": 2, "processesPerNode": 2,
                               "rendezvous": {"joinTimeoutSeconds": 1200, "readTimeoutSeconds": 120}}},
    })  # fmt: skip
    command = rendezvous.launcher_command(
        job,
        Settings(trainer_python="/venv/bin/python"),
        endpoint=names.rendezvous_endpoint("job", 1, 2),
        rdzv_id="uid-1",
        config="/etc/finetune/trainer.json",
    )
    assert command == [
        "/venv/bin/python", "-m", "finetune_trainer.launch", "--nnodes=2",
        "--rdzv-endpoint=job-a1-0.job-workers:29400", "--rdzv-id=uid-1", "--join-timeout=1200", "--read-timeout=120",
        "--", "--nproc-per-node=2", "--max-restarts=0", "-m", "finetune_trainer", "train",
        "--config", "/etc/finetune/trainer.json",
    ]  # fmt: skip
    parsed_back = launch.parse(command[3:], {"JOB_COMPLETION_INDEX": "1"})  # what the pod's launcher makes of it
    assert (parsed_back.join_timeout, parsed_back.read_timeout, parsed_back.nnodes) == (1200, 120, 2)
    assert names.rendezvous_endpoint("job", 1, 1) == "localhost:0"


def test_a_bad_input_exit_code_of_the_workers_is_the_pods(tmp_path, monkeypatch) -> None:
    """torchrun exits 1 whatever its workers' codes; the launcher exits 2 where they reported bad input, so the
    Job's pod failure policy (FailJob on exit code 2) matches."""
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(log))
    worker = (
        "import sys; from finetune_trainer import contract; "
        "contract.fail('dataset.path x.csv: no such file', contract.EXIT_BAD_INPUT); sys.exit(1)"
    )
    assert launch.run([sys.executable, "-c", worker]) == 2
    assert "dataset.path x.csv" in log.read_text()


def test_other_failures_keep_torchruns_exit_code(tmp_path, monkeypatch) -> None:
    log = tmp_path / "termination-log"
    log.write_text("error: RuntimeError: boom\nexitcode: 1")
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(log))
    assert launch.run([sys.executable, "-c", "raise SystemExit(1)"]) == 1
    assert launch.run([sys.executable, "-c", "pass"]) == 0


def test_sigterm_reaches_torchrun_and_its_signal_becomes_the_exit_code(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(tmp_path / "none"))
    ready = tmp_path / "ready"
    child = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    code = (
        "import sys; from finetune_trainer import launch; "
        f"sys.exit(launch.run([sys.executable, '-c', {child!r}]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(200):
            if ready.exists():
                break
            time.sleep(0.05)
        assert ready.exists(), "the child never started"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_torchrun_exits_as_a_shell_says() -> None:
    assert launch.exit_code(-9, launch.contract.Termination()) == 137
    assert launch.exit_code(1, launch.contract.Termination(exit_code=2)) == 2
    assert launch.exit_code(0, launch.contract.Termination(exit_code=2)) == 0
