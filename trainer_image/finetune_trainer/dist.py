"""torch.distributed set-up from torchrun's environment, and the few collectives the trainer needs."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as td

TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init() -> DistInfo:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPU); a single process needs none."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not td.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        td.init_process_group(backend=backend, timeout=TIMEOUT, **_store_args(rank, world))
    return DistInfo(rank, local_rank, world, device)


def _store_args(rank: int, world: int) -> dict[str, Any]:
    """A store namespaced by torchrun's restart count when workers share the agent's store.

    After ``--max-restarts`` restarts a worker group, the agent's store still holds the previous group's
    addresses under the same keys; a restarted rank can read a dead peer's address and fail to connect.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = td.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                        timeout=TIMEOUT)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": td.PrefixStore(f"finetune/attempt-{attempt}", store), "rank": rank, "world_size": world}


def close() -> None:
    if td.is_initialized():
        td.destroy_process_group()


def exit_without_finalizing(code: int) -> NoReturn:
    """End a worker of a distributed run: exit handlers, logging and stdio flushed, then ``os._exit``.

    A gloo worker thread can still be releasing the tensors of the last collective when the interpreter
    finalizes; taking the GIL then aborts the process (SIGABRT, "terminate called without an active exception"),
    and torchrun reports a run that succeeded as failed. Skipping finalization avoids it; exit handlers run
    first, while the interpreter is still whole.
    """
    try:
        atexit._run_exitfuncs()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def any_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any rank (used to agree on stop and save)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=info.device)
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return bool(t.item())


def mean(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    td.all_reduce(t)
    return float(t.item()) / info.world_size


def gather(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    td.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        td.barrier()
