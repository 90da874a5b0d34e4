"""CPU copies of training state for a background checkpoint upload, in buffers reused from one save to the next."""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any


class SnapshotBuffers:
    """CPU tensors reused from one save to the next.

    Fresh allocations cost as much as the copy itself (page faults), so after the first save a snapshot is a
    plain memcpy into last save's buffers. Buffers for GPU tensors are pinned, so the device-to-host copies
    run at full speed. Costs one state's worth of host memory for the life of the manager.
    """

    def __init__(self) -> None:
        self.free: dict[tuple, list] = {}

    def snapshot(self, obj: Any, lent: list) -> Any:
        """A deep copy with every tensor copied to CPU memory; the buffers used are appended to ``lent``."""
        import torch

        if isinstance(obj, torch.Tensor):
            if obj.layout != torch.strided:
                return obj.detach().to("cpu", copy=True)
            key = (tuple(obj.shape), obj.dtype, obj.is_cuda)
            pool = self.free.get(key)
            buf = pool.pop() if pool else torch.empty(key[0], dtype=obj.dtype, pin_memory=obj.is_cuda)
            buf.copy_(obj.detach(), non_blocking=obj.is_cuda)
            lent.append((key, buf))
            return buf
        if isinstance(obj, OrderedDict):
            return OrderedDict((k, self.snapshot(v, lent)) for k, v in obj.items())
        if isinstance(obj, dict):
            return {k: self.snapshot(v, lent) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.snapshot(v, lent) for v in obj]
        if type(obj) is tuple:
            return tuple(self.snapshot(v, lent) for v in obj)
        return copy.deepcopy(obj)

    def release(self, lent: list) -> None:
        for key, buf in lent:
            self.free.setdefault(key, []).append(buf)
        lent.clear()
