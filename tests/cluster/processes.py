"""The processes of a pod on the test kubelet, which runs containers as process trees of this machine (its
containerID is ``process://<pid>``): to stop or kill exactly the trainer processes of one pod."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any


def children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children(p)
    return found


def worker_processes(pod: dict[str, Any]) -> list[int]:
    """The trainer processes torchrun started in a pod, and theirs: the test kubelet runs containers as processes
    of this machine, and its containerID is ``process://<pid>``."""
    root = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
    agents = [p for p in tree(root) if "torch.distributed.run" in cmdline(p)]
    workers = [c for a in agents for c in children(a) if "finetune_trainer" in cmdline(c)]
    return [p for w in workers for p in tree(w)]


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
