"""Start torchrun for one worker pod of a multi-node group, the rendezvous host chosen by the pod's index.

    python -m finetune_trainer.launch --nnodes=2 --rdzv-endpoint=job-a1-0.job-workers:29400 --rdzv-id=UID-1 \\
        --join-timeout=900 --read-timeout=300 -- --nproc-per-node=1 -m finetune_trainer train --config F

Every pod of the group runs this same command; the node index comes from the environment
(``JOB_COMPLETION_INDEX``, as an Indexed Job sets it, else ``FINETUNE_NODE_INDEX``). Plain torchrun with the c10d
backend decides whether it hosts the rendezvous store by matching the endpoint's host against this machine's
names and addresses, which works on a cluster only once the endpoint's DNS record points at this pod; and an agent
that is not the host gives up after the store's read timeout (60 s by default) when the host is not up yet (a cold
image pull on one node). So here:

- node 0 hosts the store (``is_host=1``) and reaches it through the loopback address: the store listens on every
  interface, and its own client then needs no DNS record, which may be missing or stale while the pod starts;
- every other node waits, up to the join timeout, until the endpoint's name resolves and its port accepts a
  connection, saying what it waits for, and only then starts torchrun (``is_host=0``);
- torchrun gets the join and read timeouts (``join_timeout``, ``read_timeout`` in ``--rdzv-conf``) and, where the
  pod's IP is known (``FINETUNE_POD_IP``), ``--local-addr``: the group's rank 0 publishes that address as the
  workers' MASTER_ADDR, so the workers' process group needs no DNS either.

Then torchrun runs as this process's child: SIGTERM and SIGINT are passed on to it, and its exit code is this
process's, except that torchrun exits 1 whatever its workers' codes, so where the workers left a bad-input exit
code in the termination message (``contract.EXIT_BAD_INPUT``) that code is the pod's: the Job's pod failure
policy fails the group at once on it instead of after its pods are gone. Bad options exit with
``contract.EXIT_BAD_INPUT`` and one line; a host that never came up exits with ``contract.EXIT_FAILED``.
Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from finetune_trainer import contract

HOST_INDEX = 0
LOOPBACK = "127.0.0.1"
PROBE_SECONDS = 2.0  # one connection attempt
POLL_SECONDS = 1.0  # between attempts
LOG_EVERY_SECONDS = 30.0  # a line while the reason stays the same
# torchrun options the launcher sets itself; a second value after `--` would silently win or conflict.
OWNED = ("--nnodes", "--rdzv", "--standalone", "--local-addr", "--local_addr", "--node-rank", "--node_rank",
         "--master-addr", "--master_addr", "--master-port", "--master_port")  # fmt: skip


class LaunchError(ValueError):
    """A bad option or environment: retrying cannot help."""


@dataclass(frozen=True)
class Launch:
    """What one agent of the group starts with."""

    nnodes: int
    host: str  # the rendezvous endpoint, as every non-host node reaches it
    port: int
    rdzv_id: str
    join_timeout: int
    read_timeout: int
    index: int
    local_addr: str | None
    rest: tuple[str, ...]  # torchrun's other options, then the program and its arguments

    @property
    def is_host(self) -> bool:
        return self.index == HOST_INDEX


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise LaunchError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m finetune_trainer.launch", allow_abbrev=False)
    p.add_argument("--nnodes", type=_positive, required=True, help="Agents in the group.")
    p.add_argument("--rdzv-endpoint", required=True, help="HOST:PORT of node 0's store, as other nodes reach it.")
    p.add_argument("--rdzv-id", required=True, help="The rendezvous id, the same on every node.")
    p.add_argument("--join-timeout", type=_positive, default=900,
                   help="Seconds a node waits for the host, then for the rendezvous round (default 900).")  # fmt: skip
    p.add_argument("--read-timeout", type=_positive, default=300,
                   help="Seconds one store operation may take (default 300).")  # fmt: skip
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:  # argparse words it as "argument --x: <this message>"
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise LaunchError(f"--rdzv-endpoint {text!r}: expected HOST:PORT")
    return host, int(port)


def node_index(env: Mapping[str, str]) -> int:
    """This pod's index: an Indexed Job's ``JOB_COMPLETION_INDEX``, else ``FINETUNE_NODE_INDEX``."""
    for name in (contract.ENV_JOB_COMPLETION_INDEX, contract.ENV_NODE_INDEX):
        text = env.get(name)
        if text is not None:
            if not text.isdigit():
                raise LaunchError(f"{name}={text!r}: expected a node index 0, 1, ...")
            return int(text)
    raise LaunchError(f"no node index: set {contract.ENV_JOB_COMPLETION_INDEX} or {contract.ENV_NODE_INDEX}")


def _check_rest(rest: list[str]) -> None:
    if not rest:
        raise LaunchError("nothing to run: give torchrun's arguments after --, e.g. -- -m finetune_trainer train")
    for token in rest:
        if token in ("-m", "--module") or token.endswith(".py"):
            return  # the program's own arguments follow
        if token.startswith(OWNED):
            raise LaunchError(f"{token.split('=')[0]} after --: the launcher sets it; pass it before --")


def parse(argv: list[str], env: Mapping[str, str]) -> Launch:
    """The launch an argument list and environment describe; LaunchError says what is wrong."""
    if "--" not in argv:
        raise LaunchError("expected -- between the launcher's options and torchrun's arguments")
    cut = argv.index("--")
    args = _parser().parse_args(argv[:cut])
    rest = argv[cut + 1 :]
    _check_rest(rest)
    host, port = _endpoint(args.rdzv_endpoint)
    index = node_index(env)
    if index >= args.nnodes:
        raise LaunchError(f"node index {index} is outside a group of --nnodes={args.nnodes}")
    return Launch(
        nnodes=args.nnodes,
        host=host,
        port=port,
        rdzv_id=args.rdzv_id,
        join_timeout=args.join_timeout,
        read_timeout=args.read_timeout,
        index=index,
        local_addr=env.get(contract.ENV_POD_IP) or None,
        rest=tuple(rest),
    )


def torchrun_args(launch: Launch) -> list[str]:
    """torchrun's command line for this agent (after ``python -m torch.distributed.run``)."""
    endpoint = f"{LOOPBACK}:{launch.port}" if launch.is_host else f"{_bracket(launch.host)}:{launch.port}"
    conf = f"is_host={int(launch.is_host)},join_timeout={launch.join_timeout},read_timeout={launch.read_timeout}"
    args = [
        f"--nnodes={launch.nnodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={launch.rdzv_id}",
        f"--rdzv-conf={conf}",
    ]
    if launch.local_addr:
        args.append(f"--local-addr={launch.local_addr}")
    return args + list(launch.rest)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def probe(host: str, port: int) -> str | None:
    """None when ``host:port`` accepts a TCP connection, else why not (in words)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"its name does not resolve yet ({e.strerror})"
    reasons = []
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(PROBE_SECONDS)
                s.connect(address)
                return None
        except OSError as e:
            reasons.append(f"{address[0]}: {e.strerror or 'timed out'}")
    return ", ".join(dict.fromkeys(reasons))


def wait_for_host(launch: Launch, log: Callable[[str], None], *, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep,
                  check: Callable[[str, int], str | None] = probe) -> str | None:  # fmt: skip
    """Wait up to the join timeout for the rendezvous endpoint; None once it is up, else the last reason."""
    target = f"{launch.host}:{launch.port}"
    start = clock()
    last, logged = None, start
    while True:
        reason = check(launch.host, launch.port)
        waited = clock() - start
        if reason is None:
            if last is not None:
                log(f"rendezvous host {target} is up after {waited:.0f} s")
            return None
        if reason != last or clock() - logged >= LOG_EVERY_SECONDS:
            log(f"waiting for rendezvous host {target} (node {HOST_INDEX}): {reason} "
                f"[{waited:.0f} of {launch.join_timeout} s]")  # fmt: skip
            last, logged = reason, clock()
        if waited >= launch.join_timeout:
            return reason
        sleep(min(POLL_SECONDS, launch.join_timeout - waited))


def _log(line: str) -> None:
    print(f"launch: {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    try:
        launch = parse(list(sys.argv[1:] if argv is None else argv), os.environ if env is None else env)
    except LaunchError as e:
        return contract.fail(e, contract.EXIT_BAD_INPUT)
    role = "hosts the store" if launch.is_host else "joins"
    timeouts = f"join timeout {launch.join_timeout} s, read timeout {launch.read_timeout} s"
    _log(f"node {launch.index} of {launch.nnodes} {role} for rendezvous {launch.rdzv_id} at "
         f"{launch.host}:{launch.port} ({timeouts})")  # fmt: skip
    if not launch.is_host:
        reason = wait_for_host(launch, _log)
        if reason is not None:
            return contract.fail(
                f"rendezvous host {launch.host}:{launch.port} not reachable after {launch.join_timeout} s: {reason}",
                contract.EXIT_FAILED,
            )
    sys.stdout.flush()
    return run([sys.executable, "-m", "torch.distributed.run", *torchrun_args(launch)])


def run(command: list[str]) -> int:
    """Run ``command`` (torchrun) as a child, passing SIGTERM and SIGINT on; the pod's exit code (see above)."""
    child = subprocess.Popen(command)

    def forward(signum: int, frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_code(code, contract.read_termination())


def exit_code(code: int, said: contract.Termination) -> int:
    """The pod's exit code for torchrun's ``code`` and what the workers wrote in the termination message."""
    if code < 0:  # killed by a signal: exit as a shell would
        return 128 - code
    if code != 0 and said.exit_code in contract.PERMANENT_EXITS:
        return said.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main())
