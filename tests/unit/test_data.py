"""Tokenization, labels and sampling: the pieces that decide what the model sees."""

from __future__ import annotations

import numpy as np
import pytest

from finetune_trainer import data as D
from finetune_trainer.config import DatasetSpec, TaskSpec
from finetune_trainer.errors import InputError
from finetune_trainer.preprocessing import Preprocessing


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


def split(texts, labels, pairs=None):
    return D.TextSplit(list(texts), pairs, list(labels), "test.csv")


def test_head_tail_keeps_the_start_and_the_end(tokenizer):
    words = ["first", "second"] + ["movie"] * 200 + ["fourth", "fifth"]
    prep = Preprocessing(max_length=16, truncation="head_tail", head_tokens=4)
    enc = D.tokenize(split([" ".join(words)], [0]), tokenizer, prep, np.zeros(1, dtype=np.int64))
    ids = enc.input_ids[0]
    assert len(ids) == 16
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokenizer.convert_tokens_to_string(tokens[1:3]).startswith("first")
    assert tokenizer.convert_tokens_to_string(tokens[-4:-1]).endswith("fifth")


def test_tail_truncation_keeps_the_end(tokenizer):
    prep = Preprocessing(max_length=8, truncation="tail")
    enc = D.tokenize(split(["first " + "movie " * 50 + "fifth"], [0]), tokenizer, prep, np.zeros(1, dtype=np.int64))
    tokens = tokenizer.convert_ids_to_tokens(enc.input_ids[0])
    assert len(tokens) == 8 and tokens[-1] == "[SEP]" and "first" not in tokens


def test_no_padding_until_the_batch(tokenizer):
    prep = Preprocessing(max_length=64)
    enc = D.tokenize(split(["great", "the movie was really quite great"], [0, 1]), tokenizer, prep,
                     np.array([0, 1]))
    assert len(enc.input_ids[0]) < len(enc.input_ids[1])
    batch = D.Collator(pad_id=tokenizer.pad_token_id)(enc, [0, 1])
    assert batch["input_ids"].shape[1] == len(enc.input_ids[1])
    assert batch["attention_mask"][0].sum() == len(enc.input_ids[0])


def test_label_names_and_ids():
    task = TaskSpec()
    s = split(["a", "b", "c"], ["pos", "neg", "pos"])
    names = D.label_names_from([s], DatasetSpec(train="x"), task)
    assert names == ["neg", "pos"]
    assert D.encode_labels(s, names, task).tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("labels", "names", "message"),
    [
        (["pos", "meh"], ["neg", "pos"], "row 2 has unknown label 'meh'"),
        ([0, 5], ["neg", "pos"], "row 2 has label id 5, out of range 0..1"),
    ],
)
def test_bad_labels_name_the_row(labels, names, message):
    with pytest.raises(InputError, match=message):
        D.encode_labels(split(["a", "b"], labels), names, TaskSpec())


def test_regression_label_must_be_a_number():
    with pytest.raises(InputError, match="row 2 is 'five', expected a number"):
        D.encode_labels(split(["a", "b"], [1.0, "five"]), [], TaskSpec(type="regression"))


def test_multi_label_accepts_lists_and_separated_strings():
    task = TaskSpec(type="multi_label_classification")
    s = split(["a", "b", "c"], ["x|y", ["y"], '["x"]'])
    names = D.label_names_from([s], DatasetSpec(train="t"), task)
    assert names == ["x", "y"]
    assert D.encode_labels(s, names, task).tolist() == [[1, 1], [0, 1], [1, 0]]


def test_sampler_shards_reshuffles_and_resumes():
    a = D.EpochSampler(10, rank=0, world_size=2, seed=1)
    b = D.EpochSampler(10, rank=1, world_size=2, seed=1)
    assert sorted(a.order() + b.order()) == list(range(10))
    first = a.order()
    a.set_epoch(1)
    assert a.order() != first
    a.set_epoch(1, start=3)
    assert list(a) == a.order()[3:] and len(a) == 2


def test_grouping_by_length_pads_less_and_keeps_the_epoch_and_resume():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 129, size=1003)
    batch = 16

    def padding(order: list[int]) -> int:
        chunks = [order[i : i + batch] for i in range(0, len(order), batch)]
        return sum(int(lengths[c].max()) * len(c) - int(lengths[c].sum()) for c in chunks)

    for rank in (0, 1):
        plain = D.EpochSampler(1003, rank=rank, world_size=2, seed=3)
        grouped = D.EpochSampler(1003, rank=rank, world_size=2, seed=3, lengths=lengths, batch_size=batch)
        assert sorted(grouped.order()) == sorted(plain.order()), "the same examples for this rank"
        assert padding(grouped.order()) < padding(plain.order()) / 4
        groups = [grouped.order()[i : i + batch] for i in range(0, len(grouped.order()), batch)]
        assert all(len(g) == batch for g in groups[:-1]), "only the last batch may be short"
    sampler = D.EpochSampler(1003, rank=0, world_size=1, seed=3, lengths=lengths, batch_size=batch)
    first = sampler.order()
    assert sampler.order() == first, "a pure function of seed and epoch"
    firsts = [int(lengths[first[i]]) for i in range(0, 800, batch)]
    assert firsts != sorted(firsts, reverse=True), "batches are shuffled, not longest first"
    sampler.set_epoch(1, start=32)
    assert sampler.order() != first and list(sampler) == sampler.order()[32:]


def test_balanced_sampling_evens_out_classes():
    labels = np.array([0] * 90 + [1] * 10)
    s = D.EpochSampler(100, rank=0, world_size=1, seed=0, weights=D.balanced_weights(labels))
    drawn = labels[s.order()]
    assert 0.35 < drawn.mean() < 0.65


def test_class_weights_inverse_frequency():
    w = D.class_weights(np.array([0, 0, 0, 1]), 2)
    assert w[1] == pytest.approx(3 * w[0])
