"""On-demand profiling of a few training steps: torch.profiler on one rank, NVTX ranges on GPUs.

With ``profiling`` set, the chosen rank runs torch.profiler (CPU and, where present, CUDA activities; tensor
memory) over optimizer steps ``startStep..endStep`` and writes, to ``<run dir>/profile/`` and, when the job
has checkpoint storage, to ``<storage>/<namespace>/<name>/profile/``:

    trace-rank<R>.json          Chrome trace (chrome://tracing, Perfetto, TensorBoard)
    key_averages-rank<R>.txt    the operator table (time, calls, memory), busiest first

Inside the window the loop's phases are labelled ``data``, ``forward``, ``backward`` and ``optimizer``
(``record_function``, so they appear in the trace); on a CUDA device the same phases are NVTX ranges for the
whole run of that rank, so an Nsight Systems capture is labelled too. Without ``profiling`` the loop gets
``OFF``: no profiler, no NVTX, its iterables unchanged, one shared no-op context per phase.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from finetune_trainer.config import ProfilingSpec
from finetune_trainer.errors import InputError

log = logging.getLogger(__name__)

T = TypeVar("T")
_NOTHING = contextlib.nullcontext()


class _Off:
    """The profiler of a run that profiles nothing."""

    def phase(self, name: str) -> contextlib.AbstractContextManager[Any]:
        return _NOTHING

    def data(self, batches: Iterable[T]) -> Iterable[T]:
        return batches

    def after_step(self, done: int) -> None:
        pass

    def close(self) -> None:
        pass


OFF = _Off()


class StepProfiler(_Off):
    """torch.profiler over steps ``start..end`` of this rank, writing where ``create`` says."""

    def __init__(self, spec: ProfilingSpec, rank: int, out_dir: Path, storage: Any = None):
        self.spec, self.rank, self.out_dir, self.storage = spec, rank, out_dir, storage
        self.nvtx = torch.cuda.is_available()
        self.profiler: torch.profiler.profile | None = None
        self.done = False
        self.first_step: int | None = None
        self.last_step: int | None = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if self.nvtx:
                stack.enter_context(torch.cuda.nvtx.range(name))
            if self.profiler is not None:
                stack.enter_context(torch.profiler.record_function(name))
            yield

    def data(self, batches: Iterable[T]) -> Iterator[T]:
        it = iter(batches)
        while True:
            with self.phase("data"):
                item = next(it, _END)
            if item is _END:
                return
            yield item

    def after_step(self, done: int) -> None:
        """Called with the number of optimizer steps completed (also once before the first)."""
        if self.profiler is None and not self.done and self.spec.start_step <= done + 1 <= self.spec.end_step:
            self._start(done + 1)
        elif self.profiler is not None:
            self.last_step = done
            if done >= self.spec.end_step:
                self._stop()

    def close(self) -> None:
        """Write what was recorded if training ended (or stopped) inside the window."""
        if self.profiler is not None:
            log.warning("profiling: training ended at step %s, before profiling.endStep %d",
                        self.last_step, self.spec.end_step)
            self._stop()

    def _start(self, step: int) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(
            activities=activities, profile_memory=self.spec.memory, record_shapes=self.spec.record_shapes,
            with_stack=self.spec.with_stack,
        )
        self.profiler.start()
        self.first_step = step
        log.info("profiling: recording steps %d..%d on rank %d", step, self.spec.end_step, self.rank)

    def _stop(self) -> None:
        prof, self.profiler, self.done = self.profiler, None, True
        prof.stop()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        trace = self.out_dir / f"trace-rank{self.rank}.json"
        table = self.out_dir / f"key_averages-rank{self.rank}.txt"
        prof.export_chrome_trace(str(trace))
        sort_by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        header = f"# steps {self.first_step}..{self.last_step} of rank {self.rank}, sorted by {sort_by}\n"
        table.write_text(header + prof.key_averages().table(sort_by=sort_by, row_limit=self.spec.row_limit) + "\n",
                         encoding="utf-8")
        where = [str(self.out_dir)]
        if self.storage is not None:
            for f in (trace, table):
                self.storage.put_file(f, f"profile/{f.name}")
            where.append(f"{self.storage.url.rstrip('/')}/profile")
        log.info("profiling: steps %s..%s written to %s", self.first_step, self.last_step, " and ".join(where))


_END = object()


def create(spec: ProfilingSpec | None, rank: int, world_size: int, out_dir: Path, storage: Any = None) -> _Off:
    """The profiler of this rank: ``OFF`` unless ``spec`` asks for this rank.

    Raises:
        InputError: ``spec.rank`` is not a rank of this run.
    """
    if spec is None:
        return OFF
    if spec.rank >= world_size:
        raise InputError(f"profiling.rank {spec.rank} is not a rank of this run (world size {world_size})")
    return StepProfiler(spec, rank, out_dir, storage) if spec.rank == rank else OFF
