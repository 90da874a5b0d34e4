"""spec.ensemble: members resolved from a count, seeds or per-member entries, and bad input named by field."""

from __future__ import annotations

import pytest

from finetune_operator import api
from finetune_operator.ensemble_steps import combine_args, member_job, member_path, members
from finetune_trainer.config import ConfigError

SPEC = {
    "model": {"name": "bert-base-uncased"},
    "dataset": {"train": "train.csv"},
    "hyperparameters": {"seed": 7},
}


def job(ensemble: dict, **spec) -> api.FineTuneJob:
    return api.parse_job({"metadata": {"name": "ens"}, "spec": {**SPEC, "ensemble": ensemble, **spec}})


def error(ensemble: dict, **spec) -> str:
    with pytest.raises(ConfigError) as e:
        job(ensemble, **spec)
    return str(e.value)


def test_count_derives_seeds_from_the_job_seed() -> None:
    assert [(m.index, m.seed, m.model.name) for m in members(job({"count": 3}))] == [
        (0, 7, "bert-base-uncased"), (1, 8, "bert-base-uncased"), (2, 9, "bert-base-uncased"),
    ]  # fmt: skip


def test_seeds_and_member_models() -> None:
    assert [m.seed for m in members(job({"seeds": [3, 1, 2]}))] == [3, 1, 2]
    ms = members(job({"members": [{"seed": 5}, {"model": {"name": "other-bert"}}]}))
    assert [(m.seed, m.model.name) for m in ms] == [(5, "bert-base-uncased"), (8, "other-bert")]


def test_member_job_has_its_seed_model_and_output_folder() -> None:
    j = job({"members": [{"seed": 5}, {"seed": 6, "model": {"name": "other-bert"}}]}, output="s3://b/out")
    m = member_job(j, members(j)[1])
    assert (m.spec.hyperparameters.seed, m.spec.model.name, m.spec.ensemble) == (6, "other-bert", None)
    assert m.spec.output == "s3://b/out/members/1" == member_path("s3://b/out/", 1)
    assert j.spec.hyperparameters.seed == 7  # the job itself is unchanged


def test_combine_args_name_every_member_and_the_method() -> None:
    args = combine_args(job({"count": 2, "method": "vote"}), ["a", "b"], "out", config="c.json")
    assert args == ["combine", "--member", "a", "--member", "b", "--out", "out", "--method", "vote", "--config",
                    "c.json"]  # fmt: skip


@pytest.mark.parametrize(
    ("ensemble", "spec", "expected"),
    [
        ({"count": 1}, {}, "spec.ensemble.count: "),
        ({"seeds": [4]}, {}, "spec.ensemble: seeds: an ensemble needs 2 to 16 members, got 1"),
        ({"members": [{"seed": 1}]}, {}, "members: an ensemble needs 2 to 16 members, got 1"),
        ({"seeds": [1, 2, 1]}, {}, "ensemble.seeds[2]: seed 1 with the same model as seeds[0]"),
        ({"members": [{}, {"seed": 7}]}, {}, "ensemble.members[1]: seed 7 with the same model as members[0]"),
        ({"count": 2, "seeds": [1, 2]}, {}, "give exactly one of count, seeds or members (got count, seeds)"),
        ({}, {}, "give exactly one of count, seeds or members (got none)"),
        ({"seeds": [1, -2]}, {}, "seeds: every seed must be >= 0"),
        ({"count": 2, "method": "median"}, {}, "spec.ensemble.method: "),
        ({"count": 2, "method": "vote"}, {"task": {"type": "regression"}},
         "ensemble.method vote needs task.type single_label_classification"),
        ({"count": 2}, {"serving": {"repository": "models", "quantize": True}}, "serving.quantize"),
    ],
)
def test_bad_ensembles_are_named(ensemble: dict, spec: dict, expected: str) -> None:
    assert expected in error(ensemble, **spec)
