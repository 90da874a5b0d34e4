"""torchrun worker for test_rendezvous.py (not a test itself): joins the process group the way the trainer does
(finetune_trainer.dist.init), sums every rank's number, and prints one OK line with where it met."""

from __future__ import annotations

import os

import torch
import torch.distributed as td

from finetune_trainer import dist

info = dist.init()
total = torch.tensor([float(info.rank + 1)])
td.all_reduce(total)
print(
    f"rank {info.rank} of {info.world_size}: node rank {os.environ['GROUP_RANK']}, "
    f"master {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}, sum {int(total.item())} OK",
    flush=True,
)
td.destroy_process_group()
