"""``spec.ensemble``: N members that differ by seed (and optionally by model), published as one served model.

A member is the job itself with its own ``hyperparameters.seed`` and, optionally, its own ``model``; every
member trains on the same data with the same hold-outs (their seed is the job's, so the ensemble's evaluation
never sees a member's training rows). ``resolve`` turns the section into the member list the local backend and
the cluster builders both use.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Self

from pydantic import Field, model_validator

from finetune_trainer.config import ModelSpec, Section

MAX_MEMBERS = 16


class EnsembleMethod(StrEnum):
    MEAN = "mean"
    VOTE = "vote"


class EnsembleMember(Section):
    """One member: its seed and, optionally, its own pretrained model."""

    seed: int | None = Field(None, ge=0, description="Training seed (default: hyperparameters.seed + index).")
    model: ModelSpec | None = Field(
        None, description="This member's pretrained model (default: spec.model); it must share spec.model's "
        "tokenizer, and a classifier head it brings must have the job's labels."
    )


class EnsembleSpec(Section):
    """Train N members that differ by seed (and optionally model); serve them as one averaged model."""

    count: int | None = Field(
        None, ge=2, le=MAX_MEMBERS, description="Members with seeds hyperparameters.seed, +1, +2, ..."
    )
    seeds: list[int] | None = Field(None, description="One member per seed (at least 2, all different).")
    members: list[EnsembleMember] | None = Field(
        None, description="One entry per member, each with its own seed and optionally its own model."
    )
    method: EnsembleMethod = Field(
        EnsembleMethod.MEAN,
        description="mean: average the members' probabilities; vote: the share of members voting for each "
        "label (single-label classification only).",
    )

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        given = [k for k in ("count", "seeds", "members") if getattr(self, k) is not None]
        if len(given) != 1:
            shown = ", ".join(given) if given else "none"
            raise ValueError(f"give exactly one of count, seeds or members (got {shown})")
        for key in ("seeds", "members"):
            n = len(getattr(self, key) or [None, None])
            if not 2 <= n <= MAX_MEMBERS:
                raise ValueError(f"{key}: an ensemble needs 2 to {MAX_MEMBERS} members, got {n}")
        if self.seeds is not None and any(s < 0 for s in self.seeds):
            raise ValueError("seeds: every seed must be >= 0")
        return self


@dataclass(frozen=True)
class Member:
    """A resolved member: its index (names and storage prefixes use it), seed and model."""

    index: int
    seed: int
    model: ModelSpec


def resolve(spec: EnsembleSpec, seed: int, model: ModelSpec) -> list[Member]:
    """The members of ``spec`` for a job with ``hyperparameters.seed`` ``seed`` and ``spec.model`` ``model``.

    Raises:
        ValueError: two members would train identically (same seed and model), naming the field.
    """
    if spec.members is not None:
        members = [Member(i, m.seed if m.seed is not None else seed + i, m.model or model)
                   for i, m in enumerate(spec.members)]
        field = "members"
    else:
        seeds = spec.seeds if spec.seeds is not None else [seed + i for i in range(spec.count or 0)]
        members = [Member(i, s, model) for i, s in enumerate(seeds)]
        field = "seeds"
    seen: dict[tuple[int, str], int] = {}
    for m in members:
        key = (m.seed, m.model.model_dump_json())
        if key in seen:
            raise ValueError(
                f"{field}[{m.index}]: seed {m.seed} with the same model as {field}[{seen[key]}]; members must "
                "differ by seed or model"
            )
        seen[key] = m.index
    return members
