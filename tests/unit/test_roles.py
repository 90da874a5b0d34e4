"""Train, validation and test: a split per role from datasets with named splits, stratified hold-outs, a test
set held out of train, and integer scores that do not start at 0."""

from __future__ import annotations

import collections

import pytest

from finetune_trainer import data as D
from finetune_trainer.config import ConfigError, DatasetSpec, TaskSpec, parse
from finetune_trainer.errors import InputError
from finetune_trainer.roles import load_roles
from tests.fixtures.models import write_csv


def rows(n: int, label: str, word: str) -> list[dict]:
    return [{"text": f"{word} review number {i}", "label": label} for i in range(n)]


@pytest.fixture()
def hub_style(tmp_path):
    """A folder laid out like a hub dataset: one file per split (train and test only)."""
    folder = tmp_path / "imdb-like"
    write_csv(folder / "train.csv", rows(40, "pos", "train") + rows(40, "neg", "train"))
    write_csv(folder / "test.csv", rows(10, "pos", "test") + rows(10, "neg", "test"))
    return folder


def texts(split):
    return {t.split()[0] for t in split.texts}


def test_a_dataset_with_splits_is_read_per_role(hub_style, tmp_path):
    roles = load_roles(DatasetSpec(train=str(hub_style)), TaskSpec(), 0, tmp_path / "cache")
    assert texts(roles.train) == {"train"} and texts(roles.test) == {"test"} and len(roles.test.texts) == 20
    assert texts(roles.validation) == {"train"}  # no validation split: held out of train
    assert len(roles.train.texts) + len(roles.validation.texts) == 80


def test_the_test_role_reads_the_test_split_of_the_dataset_it_names(hub_style, sentiment_csv, tmp_path):
    """`dataset.test: imdb` once evaluated on IMDB's training split."""
    spec = DatasetSpec(train=str(sentiment_csv[0]), validation=str(sentiment_csv[1]), test=str(hub_style))
    roles = load_roles(spec, TaskSpec(), 0, tmp_path / "cache")
    assert texts(roles.test) == {"test"}


def test_a_missing_split_names_the_splits_found(hub_style, tmp_path):
    spec = DatasetSpec(train=str(hub_style), splits={"validation": "dev"})
    with pytest.raises(InputError, match=r"splits\.validation: .* has no split 'dev'; its splits are test, train"):
        load_roles(spec, TaskSpec(), 0, tmp_path / "cache")
    only_test = tmp_path / "only-test"
    write_csv(only_test / "test.csv", rows(4, "pos", "x"))
    with pytest.raises(InputError, match=r"dataset\.train: .* has no train split .*its splits are test"):
        load_roles(DatasetSpec(train=str(only_test)), TaskSpec(), 0, tmp_path / "cache")


def test_validation_is_held_out_stratified(tmp_path):
    train = write_csv(tmp_path / "train.csv", rows(90, "common", "a") + rows(10, "rare", "b"))
    roles = load_roles(DatasetSpec(train=str(train), validation_split=0.2), TaskSpec(), 3, tmp_path / "cache")
    assert collections.Counter(roles.validation.labels) == {"common": 18, "rare": 2}
    assert collections.Counter(roles.train.labels) == {"common": 72, "rare": 8}


def test_test_split_is_held_out_first_and_never_trained_or_selected_on(tmp_path):
    train = write_csv(tmp_path / "train.csv", rows(150, "pos", "p") + rows(50, "neg", "n"))
    spec = DatasetSpec(train=str(train), test_split=0.2, validation_split=0.1)
    roles = load_roles(spec, TaskSpec(), 7, tmp_path / "cache")
    assert len(roles.test.texts) == 40 and len(roles.validation.texts) == 16 and len(roles.train.texts) == 144
    train_set, val_set, test_set = (set(s.texts) for s in (roles.train, roles.validation, roles.test))
    assert not (train_set & test_set) and not (val_set & test_set) and not (train_set & val_set)
    assert collections.Counter(roles.test.labels) == {"pos": 30, "neg": 10}
    again = load_roles(spec, TaskSpec(), 7, tmp_path / "cache")
    assert again.test.texts == roles.test.texts  # seeded: the same rows every run and on every rank


def test_test_and_test_split_are_exclusive():
    with pytest.raises(ConfigError, match=r"set one of test .* or testSplit"):
        parse(DatasetSpec, {"train": "a.csv", "test": "b.csv", "testSplit": 0.2})


def test_scores_1_to_5_are_label_names_not_ids():
    split = D.TextSplit(["a", "b", "c", "d", "e"], None, [1, 2, 3, 4, 5], "scores.csv")
    for task in (TaskSpec(), TaskSpec(num_labels=5)):
        names = D.label_names_from([split], DatasetSpec(train="x"), task)
        assert names == ["1", "2", "3", "4", "5"]
        assert D.encode_labels(split, names, task).tolist() == [0, 1, 2, 3, 4]
    zero_based = D.TextSplit(["a", "b"], None, [0, 2], "ids.csv")
    assert D.label_names_from([zero_based], DatasetSpec(train="x"), TaskSpec()) == ["0", "1", "2"]
