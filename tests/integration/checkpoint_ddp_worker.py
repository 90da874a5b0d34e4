"""torchrun worker for test_checkpoint_ddp.py (not a test itself).

    torchrun --standalone --nproc-per-node=2 checkpoint_ddp_worker.py save   URL OUT
    torchrun --standalone --nproc-per-node=2 checkpoint_ddp_worker.py resume URL OUT

``save`` trains a tiny DDP model for 4 steps, checkpointing every 2 through CheckpointManager, and records what
the last checkpoint should hold in OUT/expected-<rank>.pt. ``resume`` loads the latest checkpoint, checks it
against that record and trains one more step; every rank prints one OK line.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from finetune_trainer.checkpoint import CheckpointManager
from finetune_trainer.dist import exit_without_finalizing


def build() -> tuple[DistributedDataParallel, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    )
    return model, torch.optim.AdamW(model.parameters(), lr=0.05)


def train_step(model: DistributedDataParallel, opt: torch.optim.Optimizer, step: int, rank: int) -> None:
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(step * 10 + rank))  # each rank its own data
    model(x).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()


def rng_state(rank: int) -> dict:
    return {"rank": rank, "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def assert_same(a: object, b: object, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def main(mode: str, url: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    random.seed(100 + rank)
    np.random.seed(100 + rank)
    torch.manual_seed(100 + rank)
    model, opt = build()
    ckpt = CheckpointManager(url, rank=rank, world_size=world, keep_last=2, staging_dir=Path(out) / "staging")
    expected_file = Path(out) / f"expected-{rank}.pt"
    if mode == "save":
        for step in range(1, 5):
            train_step(model, opt, step, rank)
            if step % 2 == 0:
                state = {"model": model.module.state_dict(), "optimizer": opt.state_dict(), "trainer": {"step": step}}
                rank_state = rng_state(rank)
                ckpt.save(step, state, rank_state=rank_state)
        ckpt.close()
        torch.save({"state": state, "rank_state": rank_state}, expected_file)
        print(f"rank {rank}: saved OK")
    else:
        info = ckpt.latest()
        assert info is not None and info.step == 4, info
        state, rank_state = ckpt.load(info)
        expected = torch.load(expected_file, weights_only=False)
        assert_same(state, expected["state"], "state")
        assert_same(rank_state, expected["rank_state"], f"rank_state of rank {rank}")
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        train_step(model, opt, 5, rank)
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        assert all(torch.equal(g, gathered[0]) for g in gathered), "ranks diverged after resume"
        ckpt.close()
        print(f"rank {rank}: resumed step {info.step} OK")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
    exit_without_finalizing(0)  # as the trainer's workers do (pytorch/pytorch#179291)
