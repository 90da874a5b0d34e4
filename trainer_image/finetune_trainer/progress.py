"""What rank 0 tells people and the operator while training: a progress bar on a terminal, logfmt lines
otherwise, and a small JSON progress file the operator reads (no log scraping)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune_trainer import contract
from finetune_trainer.contract import CheckpointRecord, ProgressRecord

log = logging.getLogger("finetune_trainer")


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, path)


class Progress:
    """Progress of one run as seen from rank 0; every other rank gets a silent instance."""

    def __init__(self, total_steps: int, *, enabled: bool, progress_file: str | None, start_step: int = 0,
                 sink: Callable[[bytes], None] | None = None, stage: str | None = None):
        self.total = total_steps
        self.stage = stage  # contract.STAGES, for a job with a pretraining stage
        self.sink = LatestWriter(sink) if sink is not None and enabled else None
        self.enabled = enabled
        self.file = Path(progress_file) if progress_file and enabled else None
        self.started = time.monotonic()
        self.start_step = start_step
        attempt = os.environ.get(contract.ENV_ATTEMPT, "")
        self.attempt = int(attempt) if attempt.isdigit() else None  # the worker group's, on a cluster
        self.resumed_from: int | None = None
        # The newest committed checkpoint: set from the upload thread, read by the next record.
        self.checkpoint: CheckpointRecord | None = None
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            try:
                size = os.get_terminal_size(sys.stderr.fileno())
            except OSError:
                size = os.terminal_size((0, 0))
            # A terminal that reports no size (some pseudo-terminals) would otherwise hide the bar entirely.
            sized = size.columns > 0 and size.lines > 0
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr,
                            dynamic_ncols=sized, ncols=None if sized else 120, nrows=None if sized else 24)

    def eta(self, step: int) -> float | None:
        done = step - self.start_step
        if done <= 0:
            return None
        return (time.monotonic() - self.started) / done * (self.total - step)

    def update(self, step: int, epoch: float, values: dict[str, float], phase: str = "training") -> None:
        """Report ``values`` (loss, learning_rate, samples_per_second, ...) at optimizer step ``step``."""
        if not self.enabled:
            return
        eta = self.eta(step)
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(
                loss=f"{values.get('loss', float('nan')):.4f}",
                lr=f"{values.get('learning_rate', 0):.2e}",
                samples_s=f"{values.get('samples_per_second', 0):.1f}",
                refresh=False,
            )
            self.bar.refresh()
        else:
            fields = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            stage = f"{self.stage} " if self.stage else ""
            log.info("%sstep=%d/%d epoch=%.2f %s eta=%s", stage, step, self.total, epoch, fields, _eta(eta))
        self.write(step, epoch, values, phase, eta)

    def write(self, step: int, epoch: float, values: dict[str, Any], phase: str, eta: float | None = None) -> None:
        if self.file is None and self.sink is None:
            return
        record = ProgressRecord(
            step=step,
            total_steps=self.total,
            epoch=round(epoch, 4),
            percent=round(100.0 * step / max(self.total, 1), 2),
            eta_seconds=None if eta is None else round(eta, 1),
            phase=phase,
            metrics={k: v for k, v in values.items() if isinstance(v, int | float)},
            time=time.time(),
            stage=self.stage,
            attempt=self.attempt,
            resumed_from=self.resumed_from,
            checkpoint=self.checkpoint,
        )
        if self.file is not None:
            write_json_atomic(self.file, record.to_dict())
        if self.sink is not None:
            self.sink.post(record.to_json())

    def checkpointed(self, step: int, uri: str, when: float | None = None) -> None:
        """A checkpoint of ``step`` is committed at ``uri``: the next record says so."""
        self.checkpoint = CheckpointRecord(step=step, time=time.time() if when is None else when, uri=uri)

    def begin(self, step: int, epoch: float) -> None:
        """The run starts at ``step`` (0, or the checkpoint it resumed from): one record right away, so the
        operator sees which step this attempt resumed from before its first logged step."""
        self.resumed_from = step
        self.write(step, epoch, {}, "training", None)

    def message(self, text: str, *args: Any) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text % args if args else text, file=sys.stderr)
        else:
            log.info(text, *args)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.sink is not None:
            self.sink.close()


class LatestWriter:
    """Publishes payloads from a background thread, newest only: a slow or unreachable store never stalls
    training, and an outage loses nothing but superseded progress."""

    def __init__(self, write: Callable[[bytes], None]):
        self._write = write
        self._pending: bytes | None = None
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="progress-writer", daemon=True)
        self._thread.start()

    def post(self, payload: bytes) -> None:
        with self._cv:
            self._pending = payload
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._closed:
                    self._cv.wait()
                payload, self._pending = self._pending, None
                if payload is None:
                    return
            try:
                self._write(payload)
            except Exception as e:  # progress is advisory: never stop training for it
                log.warning("could not publish progress: %s", e)

    def close(self, timeout: float = 10.0) -> None:
        """Flush the newest payload (bounded wait) and stop."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)
