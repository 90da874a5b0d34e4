"""The recipe fields (profiling, augmentation, cleaning) are checked with the rest of the spec, before any
worker starts, with messages that name the field."""

from __future__ import annotations

import pytest

from finetune_operator.api import parse_job
from finetune_trainer.config import ConfigError


def _job(profiling: dict, processes: int = 1) -> dict:
    return {
        "metadata": {"name": "p"},
        "spec": {
            "model": {"name": "m"}, "dataset": {"train": "t.csv"}, "profiling": profiling,
            "resources": {"processesPerNode": processes},
        },
    }


@pytest.mark.parametrize(
    ("profiling", "processes", "message"),
    [
        ({"startStep": 4, "endStep": 3}, 1, "profiling.endStep (3) must be at least startStep (4)"),
        ({"rank": 2}, 2, "profiling.rank 2 is not a rank of this job (world size 2)"),
        ({"startStep": 0}, 1, "spec.profiling.startStep: expected a number of at least 1, got 0"),
    ],
)
def test_profiling_fields_are_checked_before_anything_starts(profiling, processes, message):
    with pytest.raises(ConfigError) as e:
        parse_job(_job(profiling, processes))
    assert message in str(e.value)
