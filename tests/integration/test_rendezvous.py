"""Multi-node rendezvous through finetune_trainer.launch, with real torchrun agents on loopback.

Each agent runs as a pod would: in its own mount and UTS namespaces, with its own hostname
(``<job>-<index>``), its own IP in 127.0.0.0/8 (``FINETUNE_POD_IP``) and its own /etc/hosts (a file of the test's
bind-mounted over it, rewritten in place when the test lets "DNS" catch up). The rendezvous endpoint is node 0's
DNS name under the headless Service, ``<job>-0.<service>``, which no hosts file lists until the test says so.
The timeouts are short to keep the tests quick: a non-host agent of plain torchrun would give up after about
twice the read timeout, long before the late host or the late name arrives here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from finetune_trainer import contract

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("rendezvous_worker.py")
JOB = "rdzv-a1"
SERVICE = "rdzv-workers"
ENDPOINT_HOST = f"{JOB}-0.{SERVICE}"
READ_TIMEOUT = 5
JOIN_TIMEOUT = 120
LATE = 15  # seconds: past what plain torchrun's non-host agents wait (about 2 x READ_TIMEOUT)
# Bind the file over /etc/hosts, take the pod's hostname, then become the agent.
POD = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'

needs_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare for per-pod namespaces"
)


@dataclass
class Pod:
    """One worker pod of the group, as the agent inside it sees the network."""

    index: int
    hosts: Path

    @property
    def ip(self) -> str:
        return f"127.0.0.{10 + self.index}"

    @property
    def hostname(self) -> str:
        return f"{JOB}-{self.index}"

    def write_hosts(self, dns: bool) -> None:
        """The pod's own entry, as a kubelet writes it, and node 0's Service name once ``dns`` has it."""
        fqdn = f"{self.hostname}.{SERVICE}.default.svc.cluster.local"
        lines = ["127.0.0.1 localhost", f"{self.ip} {fqdn} {self.hostname}"]
        if dns:
            lines.append(f"127.0.0.10 {ENDPOINT_HOST}")
        with open(self.hosts, "w", encoding="utf-8") as f:  # in place: the bind mount holds this inode
            f.write("\n".join(lines) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(nodes: int, port: int) -> list[str]:
    return [
        sys.executable, "-m", "finetune_trainer.launch", f"--nnodes={nodes}",
        f"--rdzv-endpoint={ENDPOINT_HOST}:{port}", "--rdzv-id=rdzv-test",
        f"--join-timeout={JOIN_TIMEOUT}", f"--read-timeout={READ_TIMEOUT}",
        "--", "--nproc-per-node=1", "--max-restarts=0", str(WORKER),
    ]  # fmt: skip


def start(pod: Pod, argv: list[str], log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        contract.ENV_JOB_COMPLETION_INDEX: str(pod.index),
        contract.ENV_POD_IP: pod.ip,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "trainer_image"), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = ["unshare", "--mount", "--uts", "sh", "-c", POD, "sh", str(pod.hosts), pod.hostname, *argv]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def finish(procs: dict[int, subprocess.Popen], logs: dict[int, Path], timeout: float) -> dict[int, str]:
    """Wait for every agent; kill what is left (the agent and its workers) when one hangs. Returns each node's
    output."""
    deadline = time.monotonic() + timeout
    try:
        for proc in procs.values():
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the workers too
            proc.wait()
    return {i: logs[i].read_text(errors="replace") for i in procs}


def group(tmp_path: Path, nodes: int, *, dns: bool) -> tuple[list[Pod], dict[int, Path]]:
    pods = [Pod(i, tmp_path / f"hosts-{i}") for i in range(nodes)]
    for pod in pods:
        pod.write_hosts(dns)
    return pods, {i: tmp_path / f"node-{i}.log" for i in range(nodes)}


def assert_trained(outputs: dict[int, str], procs: dict[int, subprocess.Popen], pods: list[Pod]) -> None:
    nodes = len(pods)
    for i, text in outputs.items():
        assert procs[i].returncode == 0, f"node {i}:\n{text[-4000:]}"
        assert f"sum {nodes * (nodes + 1) // 2} OK" in text, f"node {i}:\n{text[-4000:]}"
    masters = {line.split("master ")[1].split(":")[0] for t in outputs.values() for line in t.splitlines()
               if " OK" in line and "master " in line}  # fmt: skip
    assert len(masters) == 1 and masters <= {p.ip for p in pods}, masters  # the pod IP, not a DNS name


@pytest.mark.slow
@needs_namespaces
@pytest.mark.parametrize("nodes", [2, 4])
def test_host_starting_late_still_forms_the_group(tmp_path: Path, nodes: int) -> None:
    """Nodes 1.. start first and wait; node 0 starts LATE seconds later (a cold image pull on its node)."""
    pods, logs = group(tmp_path, nodes, dns=True)
    port = free_port()
    procs = {p.index: start(p, launcher(nodes, port), logs[p.index]) for p in pods[1:]}
    time.sleep(LATE)
    assert all(proc.poll() is None for proc in procs.values()), "a non-host agent gave up before the host came"
    procs[0] = start(pods[0], launcher(nodes, port), logs[0])
    outputs = finish(procs, logs, timeout=180)
    assert_trained(outputs, procs, pods)
    for i in range(1, nodes):
        assert f"waiting for rendezvous host {ENDPOINT_HOST}:{port} (node 0)" in outputs[i]
        assert f"rendezvous host {ENDPOINT_HOST}:{port} is up after" in outputs[i]


@pytest.mark.slow
@needs_namespaces
def test_host_name_resolving_late_still_forms_the_group(tmp_path: Path) -> None:
    """Every node starts at once, but node 0's Service name resolves only LATE seconds later, on every node."""
    pods, logs = group(tmp_path, 2, dns=False)
    port = free_port()
    procs = {p.index: start(p, launcher(2, port), logs[p.index]) for p in pods}
    time.sleep(LATE)
    assert all(proc.poll() is None for proc in procs.values()), "an agent gave up before the name resolved"
    for pod in pods:
        pod.write_hosts(dns=True)
    outputs = finish(procs, logs, timeout=180)
    assert_trained(outputs, procs, pods)
    assert f"waiting for rendezvous host {ENDPOINT_HOST}:{port} (node 0): its name does not resolve yet" in outputs[1]


def run_launcher(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT / "trainer_image"), **env}
    cmd = [sys.executable, "-m", "finetune_trainer.launch", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=full, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--nnodes=2", "--rdzv-endpoint=h:29400", "--rdzv-id=x", "--", "-m", "m"], {},
         "error: no node index: set JOB_COMPLETION_INDEX or FINETUNE_NODE_INDEX"),
        (["--nnodes=2", "--rdzv-endpoint=h", "--rdzv-id=x", "--", "-m", "m"], {"JOB_COMPLETION_INDEX": "1"},
         "error: --rdzv-endpoint 'h': expected HOST:PORT"),
        (["--nnodes=2", "--rdzv-endpoint=h:1", "--rdzv-id=x", "--join-timeout=0", "--", "-m", "m"],
         {"JOB_COMPLETION_INDEX": "1"},
         "error: argument --join-timeout: expected a whole number of at least 1, got '0'"),
        (["--nnodes=2", "--rdzv-endpoint=h:1", "--rdzv-id=x", "--", "-m", "m"], {"JOB_COMPLETION_INDEX": "2"},
         "error: node index 2 is outside a group of --nnodes=2"),
    ],
)  # fmt: skip
def test_bad_options_exit_2_with_one_line(args: list[str], env: dict[str, str], message: str) -> None:
    done = run_launcher(args, env)
    assert done.returncode == contract.EXIT_BAD_INPUT
    assert done.stderr.strip() == message


def test_host_never_up_fails_after_the_join_timeout(tmp_path: Path) -> None:
    args = ["--nnodes=2", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=x", "--join-timeout=3", "--",
            "-m", "finetune_trainer", "train"]  # fmt: skip
    started = time.monotonic()
    done = run_launcher(args, {"FINETUNE_NODE_INDEX": "1", "FINETUNE_TERMINATION_LOG": os.devnull})
    assert done.returncode == contract.EXIT_FAILED
    assert 3 <= time.monotonic() - started < 30
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: rendezvous host 127.0.0.1:") and "not reachable after 3 s" in last, done.stderr


@pytest.mark.slow
def test_one_node_group_rendezvouses_inside_its_pod() -> None:
    """A one-pod group (the operator's endpoint localhost:0): node 0 hosts on a free port, two local processes."""
    args = ["--nnodes=1", "--rdzv-endpoint=localhost:0", "--rdzv-id=one", "--", "--nproc-per-node=2", str(WORKER)]
    done = run_launcher(args, {"JOB_COMPLETION_INDEX": "0", "OMP_NUM_THREADS": "1"}, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("sum 3 OK") == 2, done.stdout
