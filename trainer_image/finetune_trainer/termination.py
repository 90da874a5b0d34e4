"""The container's termination message: how a finished trainer or publish container tells the operator why.

Kubernetes copies the file at the container's ``terminationMessagePath`` (``/dev/termination-log``) into
``status.containerStatuses[].state.terminated.message`` (at most 4096 bytes). The lines written here:

    error: <what went wrong, naming the field or file>
    exitcode: <the worker's exit code>      (torchrun itself exits 1 whatever its workers' codes)
    published: {"name": ..., "version": N, "reused": false}

Both sides use this module: the trainer writes, the operator parses, so the format cannot drift.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

PATH = "/dev/termination-log"
PATH_ENV = "FINETUNE_TERMINATION_LOG"
LIMIT = 4096

_ERROR = re.compile(r"^error: (.+)$", re.M)
_EXIT = re.compile(r"^exitcode: (-?\d+)$", re.M)
_PUBLISHED = re.compile(r"^published: (\{.*\})$", re.M)


@dataclass(frozen=True)
class Termination:
    """What a termination message (or a log tail holding the same lines) says."""

    error: str | None = None
    exit_code: int | None = None
    published: dict[str, Any] | None = None


def write(*lines: str) -> bool:
    """Write ``lines`` as the termination message; False where the container has no such file (a local run)."""
    path = os.environ.get(PATH_ENV, PATH)
    if not (os.path.exists(path) and os.access(path, os.W_OK)):
        return False
    text = "\n".join(lines)
    if len(text.encode()) > LIMIT:  # keep the structured last line; shorten the free text before it
        tail = "".join("\n" + line for line in lines[1:])
        text = lines[0].encode()[: LIMIT - len(tail.encode()) - 3].decode(errors="ignore") + "..." + tail
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def fail(error: object, exit_code: int) -> int:
    """Report ``error`` as one ``error:`` line on stderr and in the termination message; return ``exit_code``."""
    line = f"error: {error}"
    print(line, file=sys.stderr)
    write(line, f"exitcode: {exit_code}")
    return exit_code


def published_line(name: str, version: int, reused: bool) -> str:
    return "published: " + json.dumps({"name": name, "version": version, "reused": reused}, separators=(",", ":"))


def parse(message: str | None) -> Termination:
    """The last error, exit code and publication in ``message``; fields it does not hold are None."""
    text = message or ""
    errors, codes, published = _ERROR.findall(text), _EXIT.findall(text), _PUBLISHED.findall(text)
    record = None
    if published:
        try:
            loaded = json.loads(published[-1])
        except ValueError:
            loaded = None
        if isinstance(loaded, dict) and isinstance(loaded.get("version"), int):
            record = loaded
    return Termination(
        error=errors[-1].strip() if errors else None,
        exit_code=int(codes[-1]) if codes else None,
        published=record,
    )
